"""Reports of an audit: an :class:`~traits.results.AuditResult` as self-contained HTML and a PDF."""

from traits.report.render import render_html, render_pdf, render_report

__all__ = ["render_html", "render_pdf", "render_report"]
