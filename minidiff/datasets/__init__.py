"""Data: toy 2-D sets, captioned shapes, IDX (MNIST) files, folders of images."""
