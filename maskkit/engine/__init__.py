"""Models, devices and the training / inference loops shared by train, predict and cam."""
