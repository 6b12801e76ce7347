"""The study: generated task families, executors for campaigns, the statistics and the metric catalogue.

- :mod:`traits.study.families`   leave-one-element-out and the other split families -> campaign specs
- :mod:`traits.study.executors`  a local process pool (default) or Dask distributed; idempotent tasks
- :mod:`traits.study.stats`      Spearman ρ with cluster-bootstrap intervals, Holm, partial ρ, noise floor
- :mod:`traits.catalogue`  the one list of metrics that ratios, reports, campaigns and gates read
- :mod:`traits.study.summary`    the study summary (JSON, Markdown, HTML) regenerated from finished tasks
"""
