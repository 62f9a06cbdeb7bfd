"""napari-unet: train and apply Keras U-Nets on EM and OCT image stacks, in napari or headless.

Importing this package loads neither TensorFlow nor Qt; they are imported on first use.
"""

__version__ = "0.1.0"
