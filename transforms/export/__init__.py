"""Training data: tf.train.Example export, de-identification, splits."""
