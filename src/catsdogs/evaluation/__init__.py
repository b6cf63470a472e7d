"""What a classifier's predictions on labelled photos say: metrics, the Evaluation object,
figures and the HTML report."""
