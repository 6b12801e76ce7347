"""TRAITS: the Trusted AI Toolkit for Scientists.

The public API mirrors the CLI::

    import traits
    spec = traits.load_spec("audits/quickstart.yaml")
    result = traits.run_audit(spec, "out/quickstart")      # writes results.json + report
    traits.render_report(traits.load_result("out/quickstart/results.json"), "out/again")
"""

__version__ = "0.1.0"

__all__ = ["load_result", "load_spec", "render_report", "run_audit", "__version__"]


def __getattr__(name: str):
    # Imported lazily so that `import traits` (and the CLI's start-up) stays fast.
    if name == "load_spec":
        from traits.spec import load_spec

        return load_spec
    if name == "run_audit":
        from traits.audit import run_audit

        return run_audit
    if name == "render_report":
        from traits.report.render import render_report

        return render_report
    if name == "load_result":
        from traits.results import load_result

        return load_result
    raise AttributeError(f"module 'traits' has no attribute {name!r}")
