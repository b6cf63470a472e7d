"""Classifiers on a frozen backbone's features, as scikit-learn-style estimators.

`LinearHead` and `DenseHead` take features and class indices (`fit(X, y)`), give class
probabilities (`predict_proba`) and turn into the Keras head that the end-to-end model carries
(`to_keras`): features in, logits out (`layers.logit_units` of them).
"""

import logging
import time

import keras
import numpy as np
from keras import layers

from catsdogs.config.choices import (
    DENSE_BATCH_SIZE,
    DENSE_DROPOUT,
    DENSE_HIDDEN_UNITS,
    DENSE_LEARNING_RATE,
    DENSE_MAX_EPOCHS,
    DENSE_PATIENCE,
    HEADS,
    SEED,
)
from catsdogs.errors import ConfigError
from catsdogs.models.layers import class_logits, logit_units

log = logging.getLogger(__name__)


# Inverse L2 strengths tried for the linear head; its features are standardised, so one grid fits all.
LINEAR_HEAD_CS = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
FALLBACK_C = 0.1  # when a class has too few images to cross-validate


def build_head(feature_dim, num_classes, hidden_units=(), dropout=0.5, l2=0.0, multi_label=False):
    """A Keras classifier on pooled features: features in, logits out.

    Args:
        feature_dim: length of the backbone's feature vector.
        num_classes: how many classes (`layers.logit_units` gives the logits).
        hidden_units: sizes of hidden ReLU layers, each followed by dropout; () for a linear head.
        dropout: dropout rate after each hidden layer.
        l2: L2 penalty on the kernels.
        multi_label: one logit per label, however many there are (independent labels).

    Returns:
        a `keras.Model` named "head", whose last layer is named "logits".
    """
    regularizer = keras.regularizers.L2(l2) if l2 else None
    inputs = keras.Input((feature_dim,), name="features")
    x = inputs
    for i, units in enumerate(hidden_units):
        x = layers.Dense(units, activation="relu", kernel_regularizer=regularizer, name=f"hidden{i}")(x)
        x = layers.Dropout(dropout, name=f"dropout{i}")(x)
    units = num_classes if multi_label else logit_units(num_classes)
    logits = layers.Dense(units, kernel_regularizer=regularizer, name="logits")(x)
    return keras.Model(inputs, logits, name="head")


def cross_entropy(y_true, logits):
    """Cross-entropy of class indices against a head's logits, two classes or many."""
    return keras.losses.sparse_categorical_crossentropy(y_true, class_logits(logits), from_logits=True)


def accuracy(y_true, logits):
    return keras.metrics.sparse_categorical_accuracy(y_true, class_logits(logits))


def compile_classifier(model, learning_rate):
    """Compiles a model that outputs a head's logits: cross-entropy on class indices, accuracy, Adam."""
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=cross_entropy, metrics=[accuracy])


def probabilities_of(head, features):
    """Class probabilities of a Keras head on features (temperature 1)."""
    logits = head.predict(np.asarray(features, np.float32), batch_size=1024, verbose=0)
    return keras.ops.convert_to_numpy(keras.ops.softmax(class_logits(logits), axis=-1)).astype(np.float64)


class LinearHead:
    """L2-regularised logistic regression on standardised features (scikit-learn).

    The L2 strength is chosen by stratified k-fold cross-validation on the training features
    (log-loss, the scaler fitted inside each fold). `to_keras` folds the standardisation into one
    Dense layer, w.(x - mean)/scale + b = (w/scale).x + (b - w.mean/scale), so every export
    format carries it as plain weights.

    Attributes (after `fit`):
        C_: the chosen inverse L2 strength.
        folds_: the folds it was chosen by (0: too few images, `FALLBACK_C` was used).
    """

    def __init__(self, strengths=LINEAR_HEAD_CS, folds=5, seed=SEED, class_weight=None):
        """Args:
            class_weight: None, or "balanced": each class weighs as much as the others in the loss
                (scikit-learn's n / (classes * count of the class)).
        """
        self.strengths, self.folds, self.seed, self.class_weight = tuple(strengths), folds, seed, class_weight

    def fit(self, X, y, groups=None):
        """Fits the head; returns self.

        Args:
            groups: one id per row, for rows that are views of one photo: the folds then keep
                them together, so that no photo is judged by a head that saw another view of it.
        """
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold, StratifiedKFold
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        from threadpoolctl import threadpool_limits

        X, y = np.asarray(X, np.float32), np.asarray(y)
        self.num_classes_ = int(y.max()) + 1
        pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, class_weight=self.class_weight))
        self.folds_ = min(self.folds, int(np.bincount(y).min()))
        # One BLAS thread: beside TensorFlow's thread pools, BLAS's own threads oversubscribe the
        # cores and the fit ran several times slower (docs/BENCHMARKS.md).
        with threadpool_limits(limits=1, user_api="blas"):
            if self.folds_ >= 2:
                folds = (StratifiedKFold if groups is None else StratifiedGroupKFold)(
                    self.folds_, shuffle=True, random_state=self.seed)
                search = GridSearchCV(pipeline, {"logisticregression__C": self.strengths}, scoring="neg_log_loss",
                                      cv=folds)
                search.fit(X, y, groups=groups)
                self.pipeline_, self.C_ = search.best_estimator_, search.best_params_["logisticregression__C"]
            else:
                self.folds_, self.C_ = 0, FALLBACK_C
                self.pipeline_ = pipeline.set_params(logisticregression__C=self.C_).fit(X, y)
        log.info("linear head: inverse L2 strength C=%g (%s)", self.C_,
                 f"chosen by {self.folds_}-fold cross-validation" if self.folds_ else "too few images to cross-validate")
        return self

    def predict_proba(self, X):
        """Class probabilities, (n, classes)."""
        return self.pipeline_.predict_proba(np.asarray(X, np.float32))

    def to_keras(self):
        """The fitted head as a Keras model (`build_head` with no hidden layer)."""
        scaler = self.pipeline_.named_steps["standardscaler"]
        classifier = self.pipeline_.named_steps["logisticregression"]
        head = build_head(len(scaler.mean_), self.num_classes_)
        kernel = (classifier.coef_ / scaler.scale_).T
        head.get_layer("logits").set_weights([kernel, classifier.intercept_ - scaler.mean_ @ kernel])
        return head

    def summary(self):
        return {"C": self.C_, "folds": self.folds_}


class EpochHistory(keras.callbacks.Callback):
    """Records every epoch's metrics and duration, and shows one progress bar over the epochs."""

    def __init__(self, max_epochs, desc):
        super().__init__()
        self.desc, self.max_epochs = desc, max_epochs
        self.rows = []

    def on_train_begin(self, logs=None):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.max_epochs, desc=self.desc, unit="epoch", leave=False, disable=None)

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.rows.append({"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()},
                          "seconds": round(time.perf_counter() - self.start, 2)})
        if "val_loss" in (logs or {}):
            self.bar.set_postfix(val_loss=f"{logs['val_loss']:.4f}", val_acc=f"{logs.get('val_accuracy', 0):.4f}")
        self.bar.update()

    def on_train_end(self, logs=None):
        self.bar.close()


def balanced_weights(y, class_weight):
    """Keras' class_weight dict for "balanced" (as scikit-learn computes it), else None."""
    if class_weight is None:
        return None
    from sklearn.utils.class_weight import compute_class_weight

    classes = np.unique(y)
    return dict(zip(classes.tolist(), compute_class_weight(class_weight, classes=classes, y=y).tolist()))


class DenseHead:
    """The study's head: fully connected ReLU layers with dropout, trained by Adam with early stopping.

    Attributes (after `fit`):
        history_: one dict per epoch: epoch, loss, accuracy, val_loss, val_accuracy, seconds.
    """

    def __init__(self, hidden_units=DENSE_HIDDEN_UNITS, dropout=DENSE_DROPOUT, l2=0.0,
                 learning_rate=DENSE_LEARNING_RATE, batch_size=DENSE_BATCH_SIZE, max_epochs=DENSE_MAX_EPOCHS,
                 patience=DENSE_PATIENCE, seed=SEED, class_weight=None):
        """Args:
            class_weight: None, or "balanced": as `LinearHead`'s, on the training loss only.
        """
        self.hidden_units, self.dropout, self.l2 = tuple(hidden_units), dropout, l2
        self.learning_rate, self.batch_size = learning_rate, batch_size
        self.max_epochs, self.patience, self.seed, self.class_weight = max_epochs, patience, seed, class_weight

    def fit(self, X, y, validation_data):
        """Trains on (X, y), stopping early on the loss of `validation_data` = (X_val, y_val); returns self.

        The weights of the epoch with the lowest validation loss are kept.
        """
        X, y = np.asarray(X, np.float32), np.asarray(y)
        X_val, y_val = np.asarray(validation_data[0], np.float32), np.asarray(validation_data[1])
        keras.utils.set_random_seed(self.seed)
        self.num_classes_ = int(max(y.max(), y_val.max())) + 1
        self.model_ = build_head(X.shape[1], self.num_classes_, self.hidden_units, self.dropout, self.l2)
        compile_classifier(self.model_, self.learning_rate)
        history = EpochHistory(self.max_epochs, "head")
        weights = balanced_weights(y, self.class_weight)
        # The validation loss that stops training and picks the epoch is weighted as the training loss is.
        validation = (X_val, y_val) if weights is None else (X_val, y_val, np.vectorize(weights.get)(y_val))
        self.model_.fit(X, y, validation_data=validation, epochs=self.max_epochs, batch_size=self.batch_size,
                        verbose=0, shuffle=True, class_weight=weights, callbacks=[
                            keras.callbacks.EarlyStopping(monitor="val_loss", patience=self.patience,
                                                          restore_best_weights=True),
                            history])
        self.history_ = history.rows
        return self

    def predict_proba(self, X):
        """Class probabilities, (n, classes)."""
        return probabilities_of(self.model_, X)

    def to_keras(self):
        """The trained head as a Keras model (features in, logits out)."""
        return self.model_

    def summary(self):
        return {"epochs": len(self.history_)}


def make_head(config):
    """The head a `TrainConfig` asks for, unfitted."""
    class_weight = None if config.class_weight == "none" else config.class_weight
    if config.multi_label:  # one linear head per label (it builds on `LinearHead`)
        from catsdogs.models.multilabel import MultiLabelHead

        return MultiLabelHead(seed=config.seed, class_weight=class_weight)
    if config.head == "linear":
        return LinearHead(seed=config.seed, class_weight=class_weight)
    if config.head == "dense":
        return DenseHead(config.hidden_units, config.dropout, config.l2, config.learning_rate, config.batch_size,
                         config.max_epochs, config.patience, config.seed, class_weight)
    raise ConfigError(f"unknown head {config.head!r}; choose one of {HEADS}")
