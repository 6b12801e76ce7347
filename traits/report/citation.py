"""How to cite an audit: TRAITS itself, the methods an audit used and the data sources it read.

:func:`citations` picks the entries a result needs (a method that did not run is not cited; the data
source's required citations always are) and :func:`bibtex` writes them as one BibTeX block for the
report's "How to cite" section. The same TRAITS entry is in ``CITATION.cff`` at the repository root.
"""

from __future__ import annotations

from dataclasses import dataclass

from traits.results import AuditResult


@dataclass(frozen=True)
class Reference:
    key: str
    kind: str  # BibTeX entry type
    fields: tuple[tuple[str, str], ...]
    why: str  # what the audit used it for
    text: str  # one-line human-readable reference

    def bibtex(self) -> str:
        width = max(len(k) for k, _ in self.fields)
        body = ",\n".join(f"  {k.ljust(width)} = {{{v}}}" for k, v in self.fields)
        return f"@{self.kind}{{{self.key},\n{body}\n}}"


def _traits(version: str) -> Reference:
    return Reference(
        "traits_toolkit", "software",
        (("title", "{TRAITS}: the Trusted {AI} Toolkit for Scientists"),
         ("author", "{TRAITS contributors}"),
         ("version", version or "0.1.0"),
         ("year", "2026"),
         ("note", "Loss-landscape audits of materials machine-learning models; Python package traits-audit")),
        "the audit itself",
        f"TRAITS contributors. TRAITS: the Trusted AI Toolkit for Scientists, version {version or '0.1.0'} (2026).",
    )


LI_2018 = Reference(
    "li2018visualizing", "inproceedings",
    (("title", "Visualizing the Loss Landscape of Neural Nets"),
     ("author", "Li, Hao and Xu, Zheng and Taylor, Gavin and Studer, Christoph and Goldstein, Tom"),
     ("booktitle", "Advances in Neural Information Processing Systems 31 (NeurIPS)"),
     ("year", "2018")),
    "filter-normalised random directions for the loss surfaces",
    "H. Li, Z. Xu, G. Taylor, C. Studer, T. Goldstein. Visualizing the loss landscape of neural nets. NeurIPS 2018.",
)
LANCZOS_1950 = Reference(
    "lanczos1950iteration", "article",
    (("title", "An iteration method for the solution of the eigenvalue problem of linear differential and "
               "integral operators"),
     ("author", "Lanczos, Cornelius"),
     ("journal", "Journal of Research of the National Bureau of Standards"),
     ("volume", "45"), ("number", "4"), ("pages", "255--282"), ("year", "1950"),
     ("doi", "10.6028/jres.045.026")),
    "Lanczos iteration for the extreme Hessian eigenvalues",
    "C. Lanczos. An iteration method for the solution of the eigenvalue problem of linear differential and "
    "integral operators. J. Res. Natl. Bur. Stand. 45, 255–282 (1950).",
)
HUTCHINSON_1989 = Reference(
    "hutchinson1989stochastic", "article",
    (("title", "A stochastic estimator of the trace of the influence matrix for {L}aplacian smoothing splines"),
     ("author", "Hutchinson, M. F."),
     ("journal", "Communications in Statistics -- Simulation and Computation"),
     ("volume", "18"), ("number", "3"), ("pages", "1059--1076"), ("year", "1989"),
     ("doi", "10.1080/03610918908812806")),
    "Hutchinson's trace estimator",
    "M. F. Hutchinson. A stochastic estimator of the trace of the influence matrix for Laplacian smoothing "
    "splines. Commun. Stat. Simul. Comput. 18, 1059–1076 (1989).",
)
MEYER_2021 = Reference(
    "meyer2021hutchpp", "inproceedings",
    (("title", "Hutch++: Optimal Stochastic Trace Estimation"),
     ("author", "Meyer, Raphael A. and Musco, Cameron and Musco, Christopher and Woodruff, David P."),
     ("booktitle", "Symposium on Simplicity in Algorithms (SOSA)"),
     ("pages", "142--155"), ("year", "2021"), ("doi", "10.1137/1.9781611976496.16")),
    "Hutch++ trace estimator",
    "R. A. Meyer, C. Musco, C. Musco, D. P. Woodruff. Hutch++: optimal stochastic trace estimation. SOSA 2021.",
)
GHORBANI_2019 = Reference(
    "ghorbani2019investigation", "inproceedings",
    (("title", "An Investigation into Neural Net Optimization via {H}essian Eigenvalue Density"),
     ("author", "Ghorbani, Behrooz and Krishnan, Shankar and Xiao, Ying"),
     ("booktitle", "Proceedings of the 36th International Conference on Machine Learning (ICML)"),
     ("series", "Proceedings of Machine Learning Research"), ("volume", "97"),
     ("pages", "2232--2241"), ("year", "2019")),
    "stochastic Lanczos quadrature for the spectral density",
    "B. Ghorbani, S. Krishnan, Y. Xiao. An investigation into neural net optimization via Hessian eigenvalue "
    "density. ICML 2019.",
)
YAO_2020 = Reference(
    "yao2020pyhessian", "inproceedings",
    (("title", "{PyHessian}: Neural Networks Through the Lens of the {H}essian"),
     ("author", "Yao, Zhewei and Gholami, Amir and Keutzer, Kurt and Mahoney, Michael W."),
     ("booktitle", "2020 IEEE International Conference on Big Data"),
     ("pages", "581--590"), ("year", "2020"), ("doi", "10.1109/BigData50022.2020.9378171")),
    "the PyHessian backend",
    "Z. Yao, A. Gholami, K. Keutzer, M. W. Mahoney. PyHessian: neural networks through the lens of the "
    "Hessian. IEEE Big Data 2020.",
)
BOTTCHER_2022 = Reference(
    "bottcher2022visualizing", "misc",
    (("title", "Visualizing high-dimensional loss landscapes with {H}essian directions"),
     ("author", "B{\\\"o}ttcher, Lucas and Wheeler, Gregory"),
     ("year", "2022"), ("eprint", "2208.13219"), ("archiveprefix", "arXiv")),
    "the Hessian-eigenvector plane",
    "L. Böttcher, G. Wheeler. Visualizing high-dimensional loss landscapes with Hessian directions. "
    "arXiv:2208.13219 (2022).",
)
VITA_2023 = Reference(
    "vita2023data", "article",
    (("title", "Data efficiency and extrapolation trends in neural network interatomic potentials"),
     ("author", "Vita, Joshua A. and Schwalbe-Koda, Daniel"),
     ("journal", "Machine Learning: Science and Technology"),
     ("volume", "4"), ("pages", "035031"), ("year", "2023"), ("doi", "10.1088/2632-2153/acf115")),
    "the loss entropy",
    "J. A. Vita, D. Schwalbe-Koda. Data efficiency and extrapolation trends in neural network interatomic "
    "potentials. Mach. Learn.: Sci. Technol. 4, 035031 (2023).",
)
JAIN_2013 = Reference(
    "jain2013materials", "article",
    (("title", "Commentary: The {M}aterials {P}roject: A materials genome approach to accelerating materials "
               "innovation"),
     ("author", "Jain, Anubhav and Ong, Shyue Ping and Hautier, Geoffroy and Chen, Wei and Richards, William "
                "Davidson and Dacek, Stephen and Cholia, Shreyas and Gunter, Dan and Skinner, David and "
                "Ceder, Gerbrand and Persson, Kristin A."),
     ("journal", "APL Materials"), ("volume", "1"), ("number", "1"), ("pages", "011002"), ("year", "2013"),
     ("doi", "10.1063/1.4812323")),
    "Materials Project data (CC BY 4.0: citation required)",
    "A. Jain et al. The Materials Project: a materials genome approach to accelerating materials innovation. "
    "APL Materials 1, 011002 (2013).",
)
SANYAL_2018 = Reference(
    "sanyal2018mtcgcnn", "misc",
    (("title", "{MT-CGCNN}: Integrating Crystal Graph Convolutional Neural Network with Multitask Learning for "
               "Material Property Prediction"),
     ("author", "Sanyal, Soumya and Balachandran, Janakiraman and Yadati, Naganand and Kumar, Abhishek and "
                "Rajagopalan, Padmini and Sanyal, Suchismita and Talukdar, Partha"),
     ("year", "2018"), ("eprint", "1811.05660"), ("archiveprefix", "arXiv")),
    "the Materials Project data set as collected for MT-CGCNN",
    "S. Sanyal et al. MT-CGCNN: integrating crystal graph convolutional neural network with multitask learning "
    "for material property prediction. arXiv:1811.05660 (2018).",
)
XIE_2018 = Reference(
    "xie2018crystal", "article",
    (("title", "Crystal Graph Convolutional Neural Networks for an Accurate and Interpretable Prediction of "
               "Material Properties"),
     ("author", "Xie, Tian and Grossman, Jeffrey C."),
     ("journal", "Physical Review Letters"), ("volume", "120"), ("number", "14"), ("pages", "145301"),
     ("year", "2018"), ("doi", "10.1103/PhysRevLett.120.145301")),
    "the CGCNN architecture and crystal graphs",
    "T. Xie, J. C. Grossman. Crystal graph convolutional neural networks for an accurate and interpretable "
    "prediction of material properties. Phys. Rev. Lett. 120, 145301 (2018).",
)
CASTELLI_2012 = Reference(
    "castelli2012new", "article",
    (("title", "New cubic perovskites for one- and two-photon water splitting using the computational "
               "materials repository"),
     ("author", "Castelli, Ivano E. and Landis, David D. and Thygesen, Kristian S. and Dahl, S{\\o}ren and "
                "Chorkendorff, Ib and Jaramillo, Thomas F. and Jacobsen, Karsten W."),
     ("journal", "Energy \\& Environmental Science"), ("volume", "5"), ("number", "10"), ("pages", "9034--9043"),
     ("year", "2012"), ("doi", "10.1039/C2EE22341D")),
    "the Castelli perovskite data",
    "I. E. Castelli et al. New cubic perovskites for one- and two-photon water splitting using the "
    "computational materials repository. Energy Environ. Sci. 5, 9034–9043 (2012).",
)
CHOUDHARY_2020 = Reference(
    "choudhary2020jarvis", "article",
    (("title", "The joint automated repository for various integrated simulations ({JARVIS}) for data-driven "
               "materials design"),
     ("author", "Choudhary, Kamal and others"),
     ("journal", "npj Computational Materials"), ("volume", "6"), ("pages", "173"), ("year", "2020"),
     ("doi", "10.1038/s41524-020-00440-1")),
    "JARVIS-DFT data",
    "K. Choudhary et al. The joint automated repository for various integrated simulations (JARVIS) for "
    "data-driven materials design. npj Comput. Mater. 6, 173 (2020).",
)


def _data_references(result: AuditResult) -> list[Reference]:
    data = result.spec.get("data") or {}
    source = str(data.get("source") or "")
    where = " ".join(str(x) for x in (data.get("path") or "", result.provenance.data_source)).lower()
    sets = data.get("sets") or {}
    if isinstance(sets, dict):
        where += " " + " ".join(str(v) for v in sets.values() if v).lower()
    refs: list[Reference] = []
    if source in ("mp", "sample") or "mp_" in where or "materials project" in where:
        refs.append(JAIN_2013)
        if source == "sample" or "mtcgcnn" in where or "mt-cgcnn" in where or "mp_36738" in where:
            refs.append(SANYAL_2018)
    if "perov" in where or "castelli" in where:
        refs.append(CASTELLI_2012)
    if source == "jarvis" or "jarvis" in where:
        refs.append(CHOUDHARY_2020)
    return refs


def citations(result: AuditResult) -> list[Reference]:
    """The references a result needs: TRAITS, the methods its probes used, its model and its data."""
    refs = [_traits(result.provenance.traits_version)]
    surf = result.surface
    if surf is not None and (surf.curves or surf.grids):
        refs.append(LI_2018)
    if result.hessian:
        refs.append(LANCZOS_1950)
        methods = {t.method for h in result.hessian.values() for t in h.traces}
        if "hutchinson" in methods:
            refs.append(HUTCHINSON_1989)
        if "hutch++" in methods:
            refs.append(MEYER_2021)
        if any(h.density is not None and h.density.grid for h in result.hessian.values()):
            refs.append(GHORBANI_2019)
        if any(h.backend == "pyhessian" for h in result.hessian.values()):
            refs.append(YAO_2020)
    if surf is not None and surf.plane:
        refs.append(BOTTCHER_2022)
    if any(m.entropy is not None for m in result.metrics.values()):
        refs.append(VITA_2023)
    arch = str((result.spec.get("model") or {}).get("architecture") or "")
    if arch.startswith("cgcnn"):
        refs.append(XIE_2018)
    refs += _data_references(result)
    return list(dict.fromkeys(refs))


def bibtex(refs: list[Reference]) -> str:
    return "\n\n".join(r.bibtex() for r in refs) + "\n"
