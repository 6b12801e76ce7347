"""TRAITS: the Trusted AI Toolkit for Scientists.

The public API mirrors the CLI::

    import traits
    spec = traits.load_spec("audits/quickstart.yaml")
    result = traits.run_audit(spec, "out/quickstart")      # writes results.json + report
    traits.render_report(traits.load_result("out/quickstart/results.json"), "out/again")
"""

from traits.version import __version__  # noqa: F401  (the public version)

#: Files of Enthought Traits (a different package, also imported as ``traits``) that TRAITS never has.
_ENTHOUGHT_FILES = ("has_traits.py", "trait_type.py", "ctraits.pyi")


def _enthought_conflict(package_dir=None, dists=None) -> str | None:
    """Why this ``traits`` package cannot work next to Enthought Traits, or None when it is alone.

    Both distributions install the import package ``traits``: installed into one environment, one
    overwrites the other's files (mixed files: neither works) or shadows it. ``dists``: the installed
    distributions named ``traits`` (``importlib.metadata``), for tests."""
    from pathlib import Path

    here = Path(package_dir) if package_dir is not None else Path(__file__).resolve().parent
    fix = ("TRAITS (distribution traits-audit) and Enthought Traits (distribution traits, used by Mayavi and "
           "TraitsUI) both install the import package 'traits' and cannot share an environment: install TRAITS "
           "into its own virtual environment (python -m venv .venv && .venv/bin/pip install traits-audit), or "
           "remove Enthought Traits (pip uninstall traits) if nothing there needs it")
    mixed = [name for name in _ENTHOUGHT_FILES if (here / name).exists()] + [p.name for p in here.glob("ctraits*.so")]
    if mixed:
        return f"{here} holds files of Enthought Traits ({', '.join(sorted(mixed))}) among TRAITS' own. {fix}"
    if dists is None:
        try:
            from importlib.metadata import distributions

            dists = [d.metadata for d in distributions(name="traits")]
        except Exception:  # noqa: BLE001 - an unreadable metadata entry must not stop the import
            dists = []
    for meta in dists:
        text = " ".join(str(meta.get(k) or "") for k in ("Author", "Author-email", "Home-page", "Summary"))
        if "enthought" in text.lower() or "observable typed attributes" in text.lower():
            return f"Enthought Traits {meta.get('Version') or ''} is installed in this environment. {fix}"
    return None


_conflict = _enthought_conflict()
if _conflict is not None:
    raise ImportError(_conflict)
del _conflict

__all__ = ["load_result", "load_spec", "render_report", "run_audit", "__version__"]


def __getattr__(name: str):
    # Imported lazily so that `import traits` (and the CLI's start-up) stays fast.
    if name == "load_spec":
        from traits.spec import load_spec

        return load_spec
    if name == "run_audit":
        from traits.threads import configure_threads

        configure_threads()  # before traits.audit imports torch: threads from the CPUs available, passive waits
        from traits.audit import run_audit

        return run_audit
    if name == "render_report":
        from traits.report.render import render_report

        return render_report
    if name == "load_result":
        from traits.results import load_result

        return load_result
    raise AttributeError(f"module 'traits' has no attribute {name!r}")
