"""The Supernet tab: a BitOPs budget to the best subnet of a mixed-precision supernet."""
