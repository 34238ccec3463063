"""The classify wing: the one classifier implementation that baseline, predict, retrain and evaluate share.

``data`` (images → tensors, augmentation), ``models`` (backbones, model files), ``train`` (losses, the training
loop, prediction), ``arms`` (which synthetic rows an arm uses; ``train_arm``), ``registry`` (saving, MLflow
registration). Reads hand-off tables through ``tasks.tables`` only. May import core modules; never a stage.
"""
