"""The ``flatplug_*`` hook specifications.

A plugin is a module (or any object) with functions marked ``@flatplug.hookimpl``, found through
the entry-point group ``flatplug`` (``[project.entry-points.flatplug] myplugin = "my_module"``).
flatplug calls each hook once per process, lazily: the first time something of that kind is
looked up (``fp.measure``, ``fp.list_plugins``, ``flatplug plugins``, scoring). Built-in objects
register through the same hooks, from the plugin named ``flatplug``.

Every hook receives one argument, a ``register`` callback::

    register(name: str, obj, *, info=None, **fields) -> None

* ``name``: the name users type (``fp.measure(name, ...)``, ``--measures name``); non-empty.
* ``obj``: the object of that kind (see each hook).
* ``fields`` (or a ready ``info=`` record): what the plugin declares about ``obj``. Every kind
  accepts ``version`` (the object's implementation version: bump it whenever its numbers change,
  so that results stores recompute instead of returning stale values) and ``paper`` (a
  reference). Measures accept the fields of :class:`flatplug.ext.MeasureInfo`, attacks those of
  :class:`flatplug.ext.AttackInfo`. An unknown field raises ``TypeError`` naming the plugin.

A name registered twice for the same kind, by the same or by two plugins, raises
:class:`flatplug.errors.DuplicatePluginError` naming both plugins; nothing of that kind is
usable until one is uninstalled or disabled (``FLATPLUG_DISABLE_PLUGINS=name``). A plugin whose
module fails to import is skipped with a :class:`flatplug.errors.PluginWarning`; the others load.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("flatplug")
hookimpl = pluggy.HookimplMarker("flatplug")


@hookspec
def flatplug_register_measures(register):
    """Register measures.

    ``obj``: ``fn(model, data, **params) -> flatplug.Measurement``; ``model`` maps [0, 1] images to
    logits, ``data`` is ``(x, y)`` or an iterable of batches. The function must run the model in
    eval mode and leave it exactly as found (``flatplug.ext.preserved``). Declare scoring's needs
    with :class:`flatplug.ext.MeasureInfo` fields, e.g.::

        register("my_measure", my_measure, version="2", default=False,
                 zoo_defaults={"samples": 20}, follows_attack=("eps",))
    """


@hookspec
def flatplug_register_attacks(register):
    """Register attacks.

    ``obj``: ``factory(model, **params) -> attack`` with ``attack(x, y) -> x_adv`` on [0, 1]
    images. Parameters use flatplug's vocabulary: ``eps``, ``norm`` (``"linf"``/``"l2"``),
    ``steps``, ``step_size``, ``random_start``; a factory may expose ``factory.parameters`` (the
    names it accepts) so that scoring passes only those. Fields: ``version``, ``paper``.
    """


@hookspec
def flatplug_register_trainers(register):
    """Register training methods.

    ``obj``: a :class:`flatplug.training.TrainingMethod` subclass, built as ``obj(**method_params)``
    by ``fp.train(model, loader, method=name, ...)``. Fields: ``version``, ``paper``.
    """


@hookspec
def flatplug_register_sources(register):
    """Register model sources.

    ``obj``: ``factory(**options) -> source`` where ``source.names(dataset=None) -> list[str]``
    and ``source.load(name, device) -> flatplug.LoadedModel`` (see
    :class:`flatplug.types.ModelSource`). Options are plain values (``manifest=``, ``model_dir=``),
    so a worker process can rebuild the source. A source may also offer ``source.fingerprint(name)
    -> str | None``, a digest of the model's content computed without loading it (its checkpoint
    files, via ``flatplug.sources.fingerprint.file_sha256``, and whatever builds the model from
    them): stored results are keyed by it, so a retrained checkpoint under the same name is scored
    afresh. Without it, or when it returns None (e.g. a checkpoint still to be downloaded), scoring
    loads the model to hash its parameters. A source may also offer ``source.check(name)``, raising an
    error that says what to provide when the model cannot be loaded as things stand (a missing
    checkpoint that cannot be fetched); ``flatplug score`` calls it for every model before any work. Fields: ``version``, ``paper``.
    """


@hookspec
def flatplug_register_datasets(register):
    """Register datasets.

    ``obj``: ``loader(path=None, n=None, seed=0, **options) -> (x, y)``: float32 images in [0, 1]
    (NCHW) and int64 labels, a deterministic class-balanced subset of size ``n``; returning a
    :class:`flatplug.sources.LabeledImages` also gives reports the data set's ``title`` ("CIFAR-10
    test set"). Stored results are keyed by a digest of the returned images and labels. Fields:
    ``version``, ``paper``.
    """


@hookspec
def flatplug_register_executors(register):
    """Register executors that run scoring jobs.

    ``obj``: ``factory(**options)`` returning an object with ``run(jobs, store, *, quiet)`` that
    runs every :class:`flatplug.scoring.Job` and writes each row to the store as it exists
    (``flatplug.scoring.run_job(job, store.put, done=store.has)`` does the work of one job;
    ``job.resolved()`` gives it its fingerprints, ``job.key(row)`` the store key of each of
    ``job.planned()``, ``job.missing(done)`` what is left to compute, honouring ``job.rerun``).
    Fields: ``version``.
    """
