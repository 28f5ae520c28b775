"""camkit's private engine: what every explainer's call runs on, one concern a module.

Read in this order: :mod:`~camkit._engine.pipeline` (the runner every explainer's
``explain`` calls, and the stages of a call), :mod:`~camkit._engine.model` (running the
user's model: eval mode, autocast, compiled models), :mod:`~camkit._engine.layer_pass`
(a CAM's hooked pass, layer by layer), :mod:`~camkit._engine.hooks` (capturing a
layer's output), :mod:`~camkit._engine.targets` (binding a target to the
output), :mod:`~camkit._engine.gradients`, :mod:`~camkit._engine.rescoring` (re-running
the model for a method's weights), :mod:`~camkit._engine.network_after` (the network after
a layer, split off with torch.fx), :mod:`~camkit._engine.finishing` and
:mod:`~camkit._engine.map_ops` (turning weights into finished maps),
:mod:`~camkit._engine.augmenting`, :mod:`~camkit._engine.detection` (torchvision box
heads), :mod:`~camkit._engine.layers` (layer names and layouts),
:mod:`~camkit._engine.distributed` (torchrun), :mod:`~camkit._engine.batch_items` (what
a loader's batch holds), :mod:`~camkit._engine.option_checks`, and
:mod:`~camkit._engine.state`: everything kept between calls, with its locks.
"""
