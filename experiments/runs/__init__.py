"""From a config to the objects of a run, and the runs themselves.

``kinds`` decides, in one table, which kind of run a config describes (plain diffusion,
noise-conditioned classifier, ControlNet, fine-tune, distillation student) and hands back a
small object behind one protocol (``RunKind``) that builds its model, loss, optimizer, data
and preview. The rest, one concept a module: ``validation`` (config checks), ``builders``
(schedule, model, loss, optimizer, mesh, initial state), ``restore`` (a workdir's config and
params/EMA), ``training_data``, ``conds`` (labels and contexts to sample), ``sampler_assembly``
(a jitted sampling function), the per-kind modules ``classifier``, ``controlnet``,
``finetune`` and ``distillation``, the train loop (``train_loop`` with ``metric_log``,
``preview`` and ``stop``), ``sampling`` (experiments.sample's modes) and ``evaluation`` /
``eval_report`` (experiments.evaluate's sweep).

Imports jaxdiff and ``experiments.runtime``, never a CLI module.
"""
