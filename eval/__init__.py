"""Evaluation harness (import name ``longctx_adapter.eval``).

- ``video``: decode video files (PyAV / decord / torchcodec), sample frames, build model inputs with the model's
  own HF processor;
- ``items``: one multiple-choice question about one video and where its frames come from;
- ``datasets``: loaders of our JSONL format, Video-MME, MVBench and MLVU as distributed;
- ``niah``: offline V-NIAH generator and depth x frames heatmaps;
- ``option_scoring``: teacher-forced option likelihood and generation with answer matching;
- ``configs``: adapter config shorthands and ablation grids;
- ``ablate``: the resumable, data-parallel ablation runner; ``runner``: model loading and ``run``;
- ``cli``: the ``run`` / ``niah`` / ``ablate`` subcommands; ``models`` / ``tasks``: the lmms-eval plugin.

Submodules are imported on demand, so ``import longctx_adapter.eval`` stays cheap.
"""
