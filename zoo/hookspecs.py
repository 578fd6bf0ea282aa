"""The hooks an ae-zoo plugin can implement.

A plugin is a module (found through the ``zoo`` entry-point group) that decorates
functions with :data:`zoo.hookimpl`. Each hook receives a ``register`` callback
rather than returning values, so one plugin can register any number of things and
a failure is attributed to the plugin that caused it.
"""

import pluggy

PROJECT = "zoo"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_architectures(register):
    """Register model architectures.

    Call ``register(cls)`` once per architecture, where ``cls`` is a subclass of
    :class:`zoo.model.Autoencoder` with a unique ``architecture`` name, a
    ``config_class`` dataclass and a non-empty ``tasks`` declaration.
    """


@hookspec
def register_models(register):
    """Register pretrained models.

    Call ``register(entry)`` once per model, where ``entry`` is a
    :class:`zoo.registry.PretrainedEntry` naming the model
    (``<architecture>-<dataset>[-variant]``), its architecture, its config, where
    its weights come from (a bundled folder and/or a Hub repo, pinned by sha256)
    and its metadata.
    """


@hookspec
def register_metrics(register):
    """Register evaluation metric sets.

    Call ``register(metric_set)`` once per :class:`zoo.metrics.MetricSet`. ``zoo eval`` runs
    every registered set that applies to the model being evaluated, and the model card lists
    its numbers. A set's name and its metric names must not clash with another set's.
    """
