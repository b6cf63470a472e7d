"""A setting declared once: a dataclass field that also carries its command-line option and help.

`TrainConfig` and `ServeSettings` declare their fields with `setting`; cli.py generates the options of
`catsdogs train` and `catsdogs serve` from them (`cli.add_settings`), so that a default, a choice or a
help text is written in one place.
"""

import dataclasses


def setting(default=dataclasses.MISSING, help="", *, flag=None, choices=None, metavar=None,
            default_factory=dataclasses.MISSING, option=True, **kwargs):
    """A dataclass field that is also a command-line option.

    Args:
        default: the setting's default (the option's too).
        help: the option's help text; "(default: ...)" is added unless it says %(default)s already.
        flag: the option, e.g. "--header-timeout" (default: the field's name with "-" for "_").
        choices: the accepted values, checked by the parser and by the settings' own check.
        metavar: how the help shows the value.
        default_factory: instead of `default`, for a default computed when the settings are made.
        option: False for a setting that has no option (or one the command line builds by hand).
        **kwargs: more `dataclasses.field` arguments (repr, compare, ...).

    Returns:
        a `dataclasses.field` with "help", "flag", "choices", "metavar" and "option" in its metadata.
    """
    metadata = {"help": help, "flag": flag, "choices": choices, "metavar": metavar, "option": option}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata, **kwargs)


def flag_of(field):
    """The command-line option of a setting: its declared flag, else --name-with-dashes."""
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")
