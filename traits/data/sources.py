"""Readers for each data source, all yielding :class:`Entry` objects (id, target, structure text).

Structures are kept as the text they came in (a CIF string or a JSON structure dict) and parsed only when a
graph has to be built, so a warm graph cache skips parsing altogether. A CIF in the layout pymatgen writes for an
ordered P1 structure (Materials Project files) is read straight from its numbers (:func:`p1_cif_crystal`, equal to
pymatgen's parse bit for bit); every other structure is parsed by pymatgen.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import math
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from traits.errors import DataError

StructureFormat = Literal["cif", "pymatgen-dict", "jarvis-atoms"]

#: Default field names of each target per source kind.
DEFAULT_TARGET_FIELDS: dict[str, dict[str, list[str]]] = {
    "mp": {"formation_energy_per_atom": ["formation_energy_per_atom"], "band_gap": ["band_gap"]},
    "sample": {"formation_energy_per_atom": ["formation_energy_per_atom"], "band_gap": ["band_gap"]},
    "jarvis": {"formation_energy_per_atom": ["formation_energy_peratom"], "band_gap": ["optb88vdw_bandgap"]},
    "csv": {"formation_energy_per_atom": ["formation_energy_per_atom"], "band_gap": ["band_gap"]},
    "ase": {"formation_energy_per_atom": ["formation_energy_per_atom"], "band_gap": ["band_gap"]},
}

SAMPLE_FILE = "mp_sample.jsonl.gz"

#: Most bytes of text one data file may hold once decompressed (also bounded by the memory available).
MAX_TEXT_BYTES = 64 << 30

#: Largest |target| read: a formation energy, band gap or energy per atom beyond it is no physical value
#: (and its square, a loss term, would overflow float32).
TARGET_LIMIT = 1e12

_COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bz2", b"\xfd7zXZ\x00": "lzma"}


def structure_from_dict(data: Any):
    """A pymatgen Structure from its dict form (``Structure.as_dict()``: ``lattice.matrix`` and each site's
    ``species`` [{element, occu}] with ``abc``, or ``xyz``), built from those numbers alone.

    ``Structure.from_dict`` is not used: it decodes every site property with monty's decoder, which imports the
    module a ``"@module"`` key names, so a data or structure file could run code. What a crystal graph needs (the
    lattice, the elements and their occupancies, the positions) is read here; site properties, charges and any
    ``@module``/``@class`` keys are ignored. A malformed dict raises ValueError."""
    from pymatgen.core import Element, Lattice, Structure

    try:
        matrix = data["lattice"]["matrix"]
        species, coords, cartesian = [], [], []
        for site in data["sites"]:
            occupancy: dict[str, float] = {}
            for sp in site["species"]:
                symbol = str(sp["element"])
                Element(symbol)  # an unknown symbol is a ValueError
                occupancy[symbol] = occupancy.get(symbol, 0.0) + float(sp.get("occu", 1.0))
            ordered = len(occupancy) == 1 and next(iter(occupancy.values())) == 1.0
            species.append(next(iter(occupancy)) if ordered else occupancy)
            frac = site.get("abc")
            coords.append([float(x) for x in (frac if frac is not None else site["xyz"])])
            cartesian.append(frac is None)
        if any(cartesian) and not all(cartesian):
            raise ValueError("sites mix fractional (abc) and Cartesian (xyz) coordinates")
        return Structure(Lattice([[float(x) for x in row] for row in matrix]), species, coords,
                         coords_are_cartesian=bool(cartesian and cartesian[0]))
    except (KeyError, TypeError, IndexError, StopIteration) as exc:
        raise ValueError(f"not a pymatgen structure dict ({type(exc).__name__}: {exc})") from None


@dataclass(frozen=True)
class Crystal:
    """An ordered crystal as the arrays a graph needs: the lattice matrix (rows a, b, c in Å), Cartesian coordinates
    (Å, one row per site), atomic numbers and periodicity; what pymatgen's ``Structure.lattice.matrix``,
    ``cart_coords``, ``[site.specie.Z]`` and ``pbc`` hold for the same structure."""

    matrix: Any  # (3, 3) float64
    coords: Any  # (n, 3) float64
    z: Any  # (n,) int64
    pbc: tuple[bool, bool, bool] = (True, True, True)


#: The layout pymatgen's ``CifWriter`` gives an ordered structure without oxidation states (Materials Project files,
#: the bundled sample): these keys, a P1 symmetry loop and this atom-site loop. :func:`p1_cif_crystal` reads only it.
_P1_CELL_KEYS = ("_cell_length_a", "_cell_length_b", "_cell_length_c",
                 "_cell_angle_alpha", "_cell_angle_beta", "_cell_angle_gamma")
_P1_INERT_KEYS = frozenset({"_symmetry_space_group_name_H-M", "_symmetry_Int_Tables_number",
                            "_chemical_formula_structural", "_chemical_formula_sum", "_cell_volume",
                            "_cell_formula_units_Z"})
_P1_KEYS = _P1_INERT_KEYS | frozenset(_P1_CELL_KEYS)
_P1_SYMMETRY_LOOP = ("_symmetry_equiv_pos_site_id", "_symmetry_equiv_pos_as_xyz")
_P1_SITE_LOOP = ("_atom_site_type_symbol", "_atom_site_label", "_atom_site_symmetry_multiplicity",
                 "_atom_site_fract_x", "_atom_site_fract_y", "_atom_site_fract_z", "_atom_site_occupancy")
_P1_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
#: Most sites read by the P1 path (larger cells go to pymatgen, whose site merging is checked pairwise here).
_P1_MAX_SITES = 500
#: pymatgen's CifParser tolerances: sites closer than this (fractional, each axis) merge into one disordered site;
#: a coordinate within it of 1/3 or 2/3 (relative) is set to that fraction.
_CIF_SITE_TOL = 1e-4
_CIF_FRAC_TOL = 1e-4


@lru_cache(maxsize=1)
def _p1_patterns():
    """(key-value line, number, the P1 symmetry row, an atom-site row, a character outside printable ASCII)."""
    import re

    gap, num = r"[ \t]+", f"({_P1_NUMBER})"
    # no '#' anywhere (pymatgen cuts a comment at any " #", even inside quotes), no label pymatgen takes for a key
    # ("_x") or a loop ("loop_1"); names and values on the line of their key
    return (re.compile(rf"(_\S+)[ \t]+({_P1_NUMBER}|'[^'#\n]*'|[^\s'\"_#$;\[\]][^\s#]*)[ \t]*", re.ASCII),
            re.compile(_P1_NUMBER, re.ASCII),
            re.compile(r"[ \t]*1[ \t]+'x, y, z'[ \t]*", re.ASCII),
            re.compile(rf"[ \t]*([A-Z][a-z]?){gap}(?!loop_)[A-Za-z0-9]\w*{gap}\d+"
                       rf"{gap}{num}{gap}{num}{gap}{num}{gap}{num}[ \t]*", re.ASCII),
            re.compile(r"[^\x20-\x7e\n\t]"))  # printable ASCII lines only (no \r, form feeds, Unicode spaces)


@lru_cache(maxsize=1)
def _element_table() -> dict[str, tuple[int, float]]:
    """Symbol -> (Z, Pauling electronegativity) of the elements Z 1-103 pymatgen gives an electronegativity (the
    noble gases He, Ne and Ar have none: pymatgen's site order for them is not a plain sort, so they are left to it)."""
    from pymatgen.core import Element

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = {el.symbol: (el.Z, float(el.X)) for el in Element if el.Z <= 103}
    return {sym: zx for sym, zx in table.items() if math.isfinite(zx[1])}


def _p1_fields(text: str) -> tuple[dict[str, str], list[tuple[str, ...]]] | None:
    """The key-value pairs and the atom-site rows of a CIF in the P1 layout, or None for anything else."""
    keyed, number, identity, site, odd = _p1_patterns()
    if odd.search(text):
        return None
    values: dict[str, str] = {}
    rows: list[tuple[str, ...]] = []  # (symbol, x, y, z, occupancy)
    loops: list[tuple[str, ...]] = []
    header: list[str] | None = None  # the names of the loop being opened
    loop: tuple[str, ...] | None = None  # the loop whose rows are being read
    n_blocks = n_identity = 0
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or line.startswith("#"):
            continue
        if header is not None:
            if stripped.startswith("_") and len(stripped.split()) == 1:
                header.append(stripped)
                continue
            loop = tuple(header)
            loops.append(loop)
            header = None
        if n_blocks == 0 and not stripped.startswith("data_"):
            return None  # pymatgen ignores what comes before the first block
        if stripped.startswith("data_"):
            if "#" in stripped or len(stripped.split()) != 1 or "powder_pattern" in stripped:
                return None  # pymatgen skips a "powder_pattern" block
            n_blocks += 1
            loop = None
        elif stripped == "loop_":
            header, loop = [], None
        elif stripped.startswith("_"):
            m = keyed.fullmatch(stripped)
            if m is None or m.group(1) in values or m.group(1) not in _P1_KEYS:
                return None
            values[m.group(1)] = m.group(2)
            loop = None
        elif loop == _P1_SYMMETRY_LOOP and identity.fullmatch(line):
            n_identity += 1
        elif loop == _P1_SITE_LOOP and (m := site.fullmatch(line)) is not None:
            rows.append(m.groups())
        else:
            return None
    if header is not None or n_blocks != 1 or n_identity != 1 or sorted(loops) != sorted([_P1_SYMMETRY_LOOP,
                                                                                           _P1_SITE_LOOP]):
        return None
    if not all(k in values and number.fullmatch(values[k]) for k in _P1_CELL_KEYS):
        return None
    return values, rows


@lru_cache(maxsize=4096)
def _angle_shape(alpha: float, beta: float, gamma: float) -> tuple[float, float, float, float] | None:
    """(sqrt(1 - cos²α - cos²β - cos²γ + 2 cosα cosβ cosγ), sin α, sin β, sin γ) of three angles in degrees, None
    for angles no cell has; kept, as cells share their angles."""
    cos = [math.cos(math.radians(x)) for x in (alpha, beta, gamma)]
    sin = [math.sin(math.radians(x)) for x in (alpha, beta, gamma)]
    shape = 1 - cos[0] ** 2 - cos[1] ** 2 - cos[2] ** 2 + 2 * cos[0] * cos[1] * cos[2]
    if not shape > 0 or not min(sin) > 0:
        return None
    return math.sqrt(shape), sin[0], sin[1], sin[2]


def _thickness(a: float, b: float, c: float, alpha: float, beta: float, gamma: float) -> float:
    """The smallest of the cell's three plane spacings d(100), d(010), d(001) in Å (V / (b c sin α), ...); 0 for a
    cell that is flat or impossible."""
    terms = _angle_shape(alpha, beta, gamma)
    if terms is None:
        return 0.0
    root, sin_alpha, sin_beta, sin_gamma = terms
    volume = a * b * c * root
    return min(volume / (b * c * sin_alpha), volume / (a * c * sin_beta), volume / (a * b * sin_gamma))


def _ascii_class(exclude: str, extra: str = "") -> str:
    """A character class of the printable ASCII characters but space and those in ``exclude``, plus ``extra``."""
    import re

    return "[" + "".join(re.escape(chr(i)) for i in range(0x21, 0x7f) if chr(i) not in exclude) + extra + "]"


@lru_cache(maxsize=1)
def _p1_layout():
    """The exact layout ``CifWriter`` writes for an ordered P1 structure, as regular expressions: (the text up to the
    atom-site rows, with the block name and the six cell numbers as groups; the rows to the end, every occupancy 1).
    A text they match is one :func:`_p1_fields` reads, to the same numbers: each token and line is one its patterns
    accept, and only printable ASCII, spaces, tabs and line ends are matched (its check for other characters)."""
    import re

    num, eol, gap = _P1_NUMBER, r"[ \t]*+\n", r"[ \t]++"
    value = (rf"(?:{num}|'{_ascii_class(chr(39) + '#', ' ')}*'"  # as _p1_patterns' key-value line, ASCII only
             rf"|{_ascii_class(chr(39) + chr(34) + '_#$;[]')}{_ascii_class('#')}*)")

    def keys(names, pattern):
        return "".join(rf"{re.escape(name)}{gap}{pattern}{eol}" for name in names)

    loop = [rf"loop_{eol}" + "".join(rf"[ \t]*{name}{eol}" for name in names)
            for names in (_P1_SYMMETRY_LOOP, _P1_SITE_LOOP)]
    header = (rf"(?:#{_ascii_class('', ' ')}*\n)*data_({_ascii_class('#')}+){eol}"
              + keys(["_symmetry_space_group_name_H-M"], value) + keys(_P1_CELL_KEYS, f"({num})")
              + keys(["_symmetry_Int_Tables_number", "_chemical_formula_structural", "_chemical_formula_sum",
                      "_cell_volume", "_cell_formula_units_Z"], value)
              + loop[0] + rf"[ \t]*1{gap}'x, y, z'{eol}" + loop[1])
    num = r"[-+]?+(?>\d++\.?+\d*+|\.\d++)(?>[eE][-+]?+\d++)?+"  # _P1_NUMBER without backtracking
    row = rf"[ \t]*+[A-Z][a-z]?+{gap}(?!loop_)[A-Za-z0-9]\w*+{gap}\d++{gap}{num}{gap}{num}{gap}{num}{gap}1{eol}"
    try:
        return re.compile(header, re.ASCII), re.compile(rf"(?:{row})++", re.ASCII)
    except re.error:  # Python 3.10: no possessive quantifiers nor atomic groups; every file is read line by line
        return None


def _p1_numbers(text: str) -> tuple[list[str], list[str], list[str]] | None:
    """(the six cell numbers, the site symbols, the sites' fractions x, y, z one after another) as text, from a CIF in
    the P1 layout with every occupancy 1; None for anything else. Pymatgen's exact layout is matched whole by two
    regular expressions; any other text goes through :func:`_p1_fields` line by line."""
    layout = _p1_layout()
    m = layout[0].match(text) if layout is not None else None
    if m is not None and layout[1].fullmatch(text, m.end()) and "powder_pattern" not in m[1]:
        tokens = text[m.end():].split()  # seven per row: symbol, label, multiplicity, x, y, z, occupancy
        frac = [""] * (3 * (len(tokens) // 7))
        frac[0::3], frac[1::3], frac[2::3] = tokens[3::7], tokens[4::7], tokens[5::7]
        return list(m.groups()[1:]), tokens[0::7], frac
    fields = _p1_fields(text)
    if fields is None:
        return None
    values, rows = fields
    if any(float(r[4]) != 1.0 for r in rows):
        return None  # a partial occupancy: pymatgen decides
    return [values[k] for k in _P1_CELL_KEYS], [r[0] for r in rows], [x for r in rows for x in r[1:4]]


@lru_cache(maxsize=4096)
def _angle_terms(alpha: float, beta: float, gamma: float) -> tuple[float, ...]:
    """The trigonometric terms ``Lattice.from_parameters`` computes from the three angles (degrees), by the same
    numpy calls on the same values, so that the matrix built from them is pymatgen's bit for bit: sin β, cos β,
    sin α, cos α, cos γ*, sin γ*. Cells share their angles (90°, 60°, 120°...): the terms are kept."""
    import numpy as np

    angles_r = np.radians([alpha, beta, gamma])
    cos_alpha, cos_beta, cos_gamma = np.cos(angles_r)
    sin_alpha, sin_beta, _sin_gamma = np.sin(angles_r)
    val = (cos_alpha * cos_beta - cos_gamma) / (sin_alpha * sin_beta)
    val = np.clip(val, -1, 1)
    gamma_star = np.arccos(val)
    return tuple(float(x) for x in (sin_beta, cos_beta, sin_alpha, cos_alpha, np.cos(gamma_star), np.sin(gamma_star)))


def _lattice_rows(a: float, b: float, c: float, alpha: float, beta: float, gamma: float) -> list[list[float]]:
    """``Lattice.from_parameters(a, b, c, alpha, beta, gamma).matrix`` as nested lists: the same arithmetic in the
    same order (the terms of :func:`_angle_terms`, then one product per entry)."""
    sin_beta, cos_beta, sin_alpha, cos_alpha, cos_gamma_star, sin_gamma_star = _angle_terms(alpha, beta, gamma)
    return [[a * sin_beta, 0.0, a * cos_beta],
            [-b * sin_alpha * cos_gamma_star, b * sin_alpha * sin_gamma_star, b * cos_alpha],
            [0.0, 0.0, float(c)]]


@lru_cache(maxsize=1)
def _p1_sites() -> dict[str, tuple[int, float, int]]:
    """Symbol -> (Z, electronegativity, rank of the symbol in string order): the keys of pymatgen's site sort."""
    table = _element_table()
    rank = {symbol: i for i, symbol in enumerate(sorted(table))}
    return {symbol: (z, x, rank[symbol]) for symbol, (z, x) in table.items()}


def _p1_candidates(texts: Sequence[str]) -> tuple[list[int], list[list[float]], list[int], list[str], list[str]]:
    """The CIFs among ``texts`` whose text is in the P1 layout with known elements and a sound cell: (their indices,
    cells, site counts, all their symbols one after another, all their fractions x, y, z as text)."""
    sites = _p1_sites()
    index, cells, sizes, symbols, fractions = [], [], [], [], []
    for i, text in enumerate(texts):
        numbers = _p1_numbers(text)
        if numbers is None:
            continue
        cell_text, syms, frac_text = numbers
        if not 0 < len(syms) <= _P1_MAX_SITES or not all(s in sites for s in syms):
            continue
        cell = list(map(float, cell_text))
        if not (all(map(math.isfinite, cell)) and min(cell[:3]) > 0 and _thickness(*cell) > 0.05):
            continue  # NaN, infinite or absurd numbers; CifParser refuses cells thinner than 0.01 Å (near it, pymatgen)
        index.append(i)
        cells.append(cell)
        sizes.append(len(syms))
        symbols.extend(syms)
        fractions.extend(frac_text)
    return index, cells, sizes, symbols, fractions


#: Most site pairs :func:`_merging_sites` compares at once (three coordinates each): bounds its memory to ~100 MB.
_MERGE_PAIR_BUDGET = 1_000_000


def _merging_sites(frac, sizes: list[int]) -> list[int]:
    """Indices (into ``sizes``) of the crystals with two sites closer than 2e-4 along every fractional axis (modulo
    1), which pymatgen would (or might) merge into one: every pair of sites of each crystal, many crystals at once."""
    import numpy as np

    merging: list[int] = []
    first = start = pairs = 0
    for j, n in enumerate(sizes):
        pairs += n * (n - 1) // 2
        if pairs >= _MERGE_PAIR_BUDGET or j == len(sizes) - 1:
            group = np.asarray(sizes[first:j + 1], dtype=np.int64)
            end = start + int(group.sum())
            merging.extend(first + i for i in _merging_in(frac[start:end], group))
            first, start, pairs = j + 1, end, 0
    return merging


def _merging_in(frac, sizes):
    """:func:`_merging_sites` of crystals whose sites are all in ``frac`` (crystal after crystal), in one go."""
    import numpy as np

    local = np.arange(len(frac)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    after = np.repeat(sizes, sizes) - local - 1  # partners of each site later in its crystal
    first = np.repeat(np.arange(len(frac)), after)
    second = first + 1 + np.arange(len(first)) - np.repeat(np.cumsum(after) - after, after)
    delta = frac[first] - frac[second]
    delta -= np.rint(delta)
    close = (np.abs(delta) < 2 * _CIF_SITE_TOL).all(axis=1)
    return np.unique(np.repeat(np.arange(len(sizes)), sizes)[first[close]]).tolist()


def p1_cif_crystals(texts: Sequence[str]) -> list[Crystal | None]:
    """:func:`p1_cif_crystal` of every text, the numbers of all of them worked at once (one numpy call per step for
    the whole list instead of one per crystal)."""
    import numpy as np

    index, cells, sizes, symbols, fractions = _p1_candidates(texts)
    out: list[Crystal | None] = [None] * len(texts)
    if not index:
        return out
    frac = np.array(list(map(float, fractions))).reshape(-1, 3)  # CifParser: float() of each
    crystal_of_site = np.repeat(np.arange(len(index)), sizes)
    bad = np.zeros(len(index), dtype=bool)
    bad[crystal_of_site[~(np.abs(frac) < 1e6).all(axis=1)]] = True  # NaN, infinite or absurd: pymatgen decides
    # CifParser._sanitize_data: math.isclose(x / ideal, 1, abs_tol=1e-4, rel_tol=0), 1/3 tried first
    third, two_thirds = 1 / 3, 2 / 3
    frac = np.where(np.abs(frac / third - 1) <= _CIF_FRAC_TOL, third,
                    np.where(np.abs(frac / two_thirds - 1) <= _CIF_FRAC_TOL, two_thirds, frac))
    bad[_merging_sites(frac, sizes)] = True
    matrices = np.array([_lattice_rows(*cell) for cell in cells], dtype=np.float64)
    bad |= ~np.isfinite(matrices).all(axis=(1, 2))
    sites = _p1_sites()
    keys = np.array([sites[s] for s in symbols], dtype=np.float64)  # Z, electronegativity, symbol rank
    order = np.lexsort((keys[:, 2], keys[:, 1], crystal_of_site))  # Structure's stable site sort, crystal by crystal
    frac = frac[order]
    # CifParser._unique_coords wraps each coordinate by x - math.floor(x) (an int: + 0.0 keeps -0.0 as -0.0 - 0);
    # PeriodicSite.coords is np.dot(frac, matrix), BLAS's vector-matrix product: the same product stacked
    wrapped = frac - (np.floor(frac) + 0.0)
    coords = np.matmul(wrapped[:, None, :], matrices[crystal_of_site])[:, 0, :]
    z = keys[order, 0].astype(np.int64)
    end = np.cumsum(sizes).tolist()
    for j, i in enumerate(index):
        if not bad[j]:
            start = end[j] - sizes[j]
            out[i] = Crystal(matrices[j], coords[start:end[j]], z[start:end[j]])
    return out


def p1_cif_crystal(text: str) -> Crystal | None:
    """The crystal of a CIF in the layout pymatgen writes for an ordered P1 structure without oxidation states
    (Materials Project files), read from the numbers in the text and bit for bit what ``Structure.from_str(text,
    fmt="cif")`` gives (lattice matrix, Cartesian coordinates, atomic numbers, site order), many times faster than
    that parse (``bench/bench_graphs.py``; :func:`p1_cif_crystals` reads many at once).

    None for anything else (another layout or symmetry, a partial occupancy, sites that pymatgen would merge, an
    element without electronegativity, more than 500 sites, a near-flat cell): the caller parses those with pymatgen.
    What pymatgen's CifParser does to such a file is repeated exactly: fractions within 1e-4 of 1/3 or 2/3 set to
    them, coordinates wrapped to [0, 1) by x - floor(x), the lattice by ``Lattice.from_parameters``'s arithmetic,
    sites stably sorted by (electronegativity, symbol), Cartesian coordinates by the BLAS vector-matrix product of
    each site's fractions with the matrix (``np.dot`` per site in pymatgen, one stacked ``np.matmul`` here). Nothing
    is decoded or imported from the text. ``tests/test_graphs_neighbours.py`` checks it against pymatgen."""
    return p1_cif_crystals([text])[0]


#: Compressed structure files: their suffix and how to open them (what they expand to is bounded while read).
_COMPRESSED_SUFFIXES = {".gz": "gzip", ".bz2": "bz2", ".xz": "lzma"}


def structure_file_format(path: Path) -> str | None:
    """'cif', 'poscar' or 'json' from a structure file's name (under a .gz, .bz2 or .xz suffix), or None."""
    name = Path(path).name.lower()
    for suffix in _COMPRESSED_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    if name.endswith(".cif"):
        return "cif"
    if name.endswith(".json"):
        return "json"
    if name.endswith((".vasp", ".poscar")) or name.startswith(("poscar", "contcar")):
        return "poscar"
    return None


def read_structure_file(path: Path):
    """The crystal structure of one CIF, POSCAR/CONTCAR (``*.vasp``) or pymatgen-JSON file, plain or compressed.

    The file's kind is taken from its name and its text is read here, bounded while it is read (a compressed file's
    expansion is capped at :data:`traits.inputs.SMALL_FILE_LIMIT` whatever its header says), then parsed from that
    text: pymatgen's ``from_file`` is not used, since it opens any format it knows by name (YAML with unbounded
    aliases, JSON decoded by monty, which imports modules) and decompresses without a bound. A DataError names
    the file and the problem."""
    text, fmt = read_structure_text(path)
    return parse_structure_text(text, fmt, path)


def read_structure_text(path: Path) -> tuple[str, str]:
    """(text, format) of one structure file, read bounded as :func:`read_structure_file` reads it, not parsed
    (a CIF in pymatgen's P1 layout can then be read straight from its numbers, :func:`p1_cif_crystal`)."""
    import bz2
    import lzma

    from traits.inputs import SMALL_FILE_LIMIT, check_fits, file_size, read_stream_bounded, require_file

    path = Path(path)
    fmt = structure_file_format(path)
    if fmt is None:
        raise DataError(f"{path}: not a structure file TRAITS reads (a CIF, POSCAR/CONTCAR, *.vasp or pymatgen "
                        "structure JSON file, plain or .gz/.bz2/.xz)")
    require_file(path, "structure file", DataError)
    check_fits(path, file_size(path), "structure file", DataError, limit=SMALL_FILE_LIMIT)
    opener = {"gzip": gzip.open, "bz2": bz2.open, "lzma": lzma.open}.get(
        next((v for k, v in _COMPRESSED_SUFFIXES.items() if path.name.lower().endswith(k)), ""), open)
    try:
        with opener(path, "rb") as fh:
            raw = read_stream_bounded(fh, path, "structure file", DataError, SMALL_FILE_LIMIT)
        text = bytes(raw).decode("utf-8")
    except (OSError, EOFError, lzma.LZMAError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: unreadable structure file ({type(exc).__name__}: {exc})") from None
    return text, fmt


def parse_structure_text(text: str, fmt: str, path: Path):
    """The pymatgen structure of a structure file's text (:func:`read_structure_text`); a DataError names the
    file when it cannot be read."""
    from pymatgen.core import Structure

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if fmt == "json":
                return structure_from_dict(json.loads(text))
            return Structure.from_str(text, fmt=fmt)
    except Exception as exc:  # pymatgen raises many kinds for unreadable files
        raise DataError(f"{path}: cannot read a crystal structure from this {fmt.upper()} file "
                        f"({type(exc).__name__}: {str(exc)[:200]})") from None


@dataclass(frozen=True)
class Entry:
    """One compound as read from a source: its id, target value and structure text."""

    id: str
    target: float
    payload: str
    fmt: StructureFormat

    def __post_init__(self) -> None:
        # an id is written into CSV, JSON and reports: a lone surrogate (valid in JSON text, or a file name's
        # undecodable byte) is kept as its escape, e.g. the text \ud800, so every file TRAITS writes can hold it
        object.__setattr__(self, "id", str(self.id).encode("utf-8", "backslashreplace").decode("utf-8"))

    def fast_crystal(self) -> Crystal | None:
        """The crystal read straight from the numbers of a CIF in pymatgen's P1 layout (:func:`p1_cif_crystal`), equal
        to what :meth:`structure` gives; None when that path does not apply (then parse with :meth:`structure`). A
        subclass that supplies its own structure is not second-guessed: None."""
        if self.fmt != "cif" or type(self).structure is not Entry.structure:
            return None
        return p1_cif_crystal(self.payload)

    def structure(self):
        """Parse the structure with pymatgen (raises ``ValueError`` on an unreadable structure)."""
        from pymatgen.core import Lattice, Structure

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if self.fmt == "cif":
                try:
                    return Structure.from_str(self.payload, fmt="cif")
                except Exception as exc:  # pymatgen raises many kinds for bad CIFs
                    raise ValueError(f"unreadable CIF: {exc}") from exc
            data = json.loads(self.payload)
            try:
                if self.fmt == "pymatgen-dict":
                    return structure_from_dict(data)
                lattice = Lattice(data["lattice_mat"])
                return Structure(
                    lattice,
                    [s.strip() for s in data["elements"]],
                    data["coords"],
                    coords_are_cartesian=bool(data.get("cartesian", False)),
                )
            except Exception as exc:
                raise ValueError(f"unreadable structure: {exc}") from exc


def fast_crystals(entries: Sequence[Entry]) -> list[Crystal | None]:
    """:meth:`Entry.fast_crystal` of every entry, the CIFs read together (:func:`p1_cif_crystals`)."""
    out: list[Crystal | None] = [None] * len(entries)
    eligible = [i for i, entry in enumerate(entries)
                if entry.fmt == "cif" and type(entry).structure is Entry.structure]
    for i, crystal in zip(eligible, p1_cif_crystals([entries[i].payload for i in eligible])):
        out[i] = crystal
    return out


@dataclass
class SourceData:
    """What a reader returns: the usable entries, counted skips and a hash of the raw file."""

    entries: list[Entry]
    skipped: Counter = field(default_factory=Counter)
    data_hash: str = ""
    source: str = ""


def sample_path() -> Path:
    """Path of the Materials Project sample shipped inside the package."""
    return Path(str(resources.files("traits.data") / "sample" / SAMPLE_FILE))


def file_hash(path: Path) -> str:
    from traits.inputs import require_file

    require_file(Path(path), "data file", DataError)
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise DataError(f"{path}: cannot read the data file ({exc})") from exc
    return digest.hexdigest()


def _text_limit() -> tuple[int, str]:
    """(bytes, why): the most text one data file may decompress to, and the reason, for messages."""
    from traits.inputs import MEMORY_SHARE, available_memory

    free = available_memory()
    if free is not None and MEMORY_SHARE * free / 2 < MAX_TEXT_BYTES:  # the text, and the records parsed from it
        return int(MEMORY_SHARE * free / 2), "the available memory allows (for the text and what is parsed from it)"
    return MAX_TEXT_BYTES, "a data file may hold (traits.data.sources.MAX_TEXT_BYTES)"


def _compression(path: Path) -> str | None:
    with open(path, "rb") as fh:
        head = fh.read(6)
    return next((kind for magic, kind in _COMPRESSED.items() if head.startswith(magic)), None)


def _open_stream(path: Path, kind: str | None):
    import bz2
    import lzma

    opener = {"gzip": gzip.open, "bz2": bz2.open, "lzma": lzma.open}.get(kind or "", open)
    return opener(path, "rb")


def _read_all(path: Path) -> str:
    """The file's text (gzip or plain), after checking it is a regular file whose text fits in memory. A
    compressed file is bounded while it is read (in chunks), whatever its trailer says: a multi-member gzip
    file records only its last member's size."""
    from traits.inputs import check_fits, file_size, read_stream_bounded, require_file

    require_file(path, "data file", DataError)
    try:
        size = file_size(path)
        limit, why = _text_limit()
        kind = _compression(path)
        if kind not in (None, "gzip"):
            raise DataError(f"{path}: a {kind}-compressed data file; this reader takes plain or gzip text")
        if kind == "gzip" and size >= 18:
            with open(path, "rb") as fh:  # a one-member file is refused early by its trailer (size modulo 2**32)
                fh.seek(-4, io.SEEK_END)
                size = max(size, int.from_bytes(fh.read(4), "little"))
        check_fits(path, 2 * size, "data file", DataError)
        with _open_stream(path, kind) as fh:
            data = read_stream_bounded(fh, path, "data file", DataError, limit, why)
        return data.decode("utf-8")
    except MemoryError:
        raise DataError(f"{path}: the data file does not fit in the available memory") from None
    except (OSError, EOFError, gzip.BadGzipFile, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: unreadable or truncated data file ({type(exc).__name__}: {exc})") from exc


def _check_expanded_size(path: Path) -> None:
    """For readers that open the file themselves (ASE): that it fits, and that a compressed file does not
    expand beyond the limit (decompressed once in chunks and counted, nothing kept)."""
    import lzma

    from traits.inputs import _human, check_fits, file_size, require_file

    require_file(path, "data file", DataError)
    limit, why = _text_limit()
    check_fits(path, 2 * file_size(path), "data file", DataError)
    kind = _compression(path)
    if kind is None:
        return
    total = 0
    try:
        with _open_stream(path, kind) as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                total += len(block)
                if total > limit:
                    raise DataError(f"{path}: the data file expands to more than {_human(limit)}, the most {why}; "
                                    "reading stopped there. Is it the right file?")
    except (OSError, EOFError, ValueError, lzma.LZMAError) as exc:
        raise DataError(f"{path}: unreadable or truncated {kind} data file ({type(exc).__name__}: {exc})") from exc


def _json_records(path: Path) -> Iterator[dict[str, Any]]:
    """Records from a JSON list, a JSON object of records, or JSON Lines (plain or gzip)."""
    from traits.inputs import parse_json

    text = _read_all(path)
    stripped = text.lstrip()
    if not stripped:
        raise DataError(f"{path}: the data file is empty")
    if stripped[0] == "[":
        data = parse_json(text, DataError, lambda exc: f"{path}: not valid JSON ({exc}); is the file truncated?",
                          f"{path}: the JSON is nested too deeply to be a list of records")
        yield from data
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}: line {lineno}"
        yield parse_json(line, DataError, lambda exc, where=where: f"{where} is not valid JSON ({exc}); is the file "
                         "truncated?", f"{where} is nested too deeply to be a record")


def _to_float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return None if math.isnan(out) else out


def _target(path: Path, rid: str, name: str | None, value: Any) -> float | None:
    """The target read from field ``name`` of record ``rid``: None when missing, non-numeric or NaN (the record
    is skipped and counted); a DataError naming the file, the record and the field for ±inf or a magnitude
    above :data:`TARGET_LIMIT`, which no probe could score."""
    out = _to_float(value)
    if out is not None and not abs(out) <= TARGET_LIMIT:
        raise DataError(f"{path}: record {rid[:80]!r}: target field {name!r} is {out:g}; a target must be finite and "
                        f"at most {TARGET_LIMIT:g} in magnitude")
    return out


def _pick(record: dict[str, Any], names: list[str]) -> tuple[str | None, Any]:
    for name in names:
        if name in record:
            return name, record[name]
    return None, None


def _target_names(kind: str, target: str, column: str | None) -> list[str]:
    """Fields to read the target from; none for the label-free target 'model' (every entry gets NaN); a target
    without a default field is read from the field of its own name."""
    if target == "model":
        return []
    return [column] if column else DEFAULT_TARGET_FIELDS[kind].get(target, [target])


def _read_json_source(
    path: Path,
    names: list[str],
    record_id: Callable[[dict[str, Any], int], str],
    structure: Callable[[dict[str, Any]], tuple[str, StructureFormat] | str],
) -> SourceData:
    """The records of a JSON / JSONL source: ``record_id(record, index)`` names each, its target is the
    first of ``names`` it has, and ``structure(record)`` gives (structure text, format) or the reason to
    skip it. Records that are not objects or lack a numeric target are skipped and counted."""
    out = SourceData(entries=[], data_hash=file_hash(path), source=str(path))
    seen_target = False
    for i, rec in enumerate(_json_records(path)):
        if not isinstance(rec, dict):
            out.skipped["record is not a JSON object"] += 1
            continue
        rid = record_id(rec, i)
        name, raw = _pick(rec, names)
        seen_target |= name is not None or not names
        value = _target(path, rid, name, raw) if names else math.nan  # JARVIS writes "na" for missing values
        if value is None:
            out.skipped["missing or non-numeric target"] += 1
            continue
        found = structure(rec)
        if isinstance(found, str):
            out.skipped[found] += 1
            continue
        out.entries.append(Entry(rid, value, *found))
    if not seen_target:
        raise DataError(f"{path}: no record has the target field {names[0]!r}")
    return out


def _mp_structure(rec: dict[str, Any]) -> tuple[str, StructureFormat] | str:
    if isinstance(rec.get("cif"), str):
        return rec["cif"], "cif"
    if isinstance(rec.get("structure"), dict):
        return json.dumps(rec["structure"], sort_keys=True), "pymatgen-dict"
    return "no structure (neither 'cif' nor 'structure')"


def _jarvis_structure(rec: dict[str, Any]) -> tuple[str, StructureFormat] | str:
    atoms = rec.get("atoms")
    if not isinstance(atoms, dict):
        return "no 'atoms' structure"
    return json.dumps(atoms, sort_keys=True), "jarvis-atoms"


def read_mp(path: Path, target: str, column: str | None = None, kind: str = "mp") -> SourceData:
    """Materials Project records: ``material_id``, the target, and ``cif`` or ``structure`` (a dict)."""
    return _read_json_source(
        path,
        _target_names(kind, target, column),
        lambda rec, i: str(rec.get("material_id", rec.get("task_id", f"row-{i}"))),
        _mp_structure,
    )


def read_jarvis(path: Path, target: str, column: str | None = None) -> SourceData:
    """JARVIS-DFT records: ``jid``, ``atoms`` (lattice_mat, coords, elements, cartesian) and targets."""
    return _read_json_source(
        path,
        _target_names("jarvis", target, column),
        lambda rec, i: str(rec.get("jid", f"row-{i}")),
        _jarvis_structure,
    )


def read_csv(
    path: Path,
    target: str,
    column: str | None = None,
    id_column: str | None = None,
    structure_column: str | None = None,
) -> SourceData:
    """A CSV file with an id column, a CIF column and target columns (plain or gzip)."""
    tcol = (_target_names("csv", target, column) or [None])[0]
    icol = id_column or "material_id"
    scol = structure_column or "cif"
    text = _read_all(path)
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        # strict: a quoted field cut off by the end of the file is an error, not a short record
        reader = csv.DictReader(io.StringIO(text), strict=True)
        header = reader.fieldnames or []
        missing = [c for c in (tcol, scol) if c is not None and c not in header]
        if missing:
            raise DataError(f"{path}: column(s) {missing} not found; the file has {header}")
        out = SourceData(entries=[], data_hash=file_hash(path), source=str(path))
        for i, row in enumerate(reader):
            if None in row or any(v is None for v in row.values()):
                n_fields = len(header) - sum(v is None for v in row.values()) + len(row.get(None) or [])
                raise DataError(
                    f"{path}: line {reader.line_num} has {n_fields} fields but the header has {len(header)}; "
                    "is the file truncated?"
                )
            rid = str(row.get(icol) or f"row-{i}")
            value = _target(path, rid, tcol, row.get(tcol)) if tcol is not None else math.nan
            if value is None:
                out.skipped["missing or non-numeric target"] += 1
                continue
            cif = row.get(scol)
            if not cif:
                out.skipped["empty structure cell"] += 1
                continue
            out.entries.append(Entry(rid, value, cif, "cif"))
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV ({exc}); is the file truncated?") from exc
    return out


def read_ase(path: Path, target: str, column: str | None = None, id_column: str | None = None) -> SourceData:
    """Any file ASE reads (extxyz, an ASE database ``.db``, CIF, POSCAR, ...), every frame / row one compound.

    The target is the frame's ``info`` (database: key-value pair) named ``column`` or the target's own name, or,
    for ``energy_per_atom`` without such a field, the attached calculator's energy divided by the atoms; the id is
    ``info[id_column or 'material_id']`` or ``<file stem>-<index>``. Needs ``pip install 'traits-audit[ase]'``."""
    try:
        import ase.io
    except ImportError:
        raise DataError(f"{path}: reading ASE files needs the 'ase' package: run `pip install 'traits-audit[ase]'`") \
            from None
    from pymatgen.io.ase import AseAtomsAdaptor

    names = _target_names("ase", target, column) if target != "model" else []
    _check_expanded_size(Path(path))
    out = SourceData(entries=[], data_hash=file_hash(path), source=str(path))
    try:
        frames = ase.io.read(str(path), index=":")
    except Exception as exc:  # ASE raises many kinds for unreadable files
        raise DataError(f"{path}: ASE cannot read this file ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(frames, list):
        frames = [frames]
    key = id_column or "material_id"
    for i, atoms in enumerate(frames):
        info = dict(atoms.info or {})
        rid = str(info.get(key, f"{Path(path).name.split('.')[0]}-{i}"))
        value: float | None = math.nan
        if names:
            name, raw = _pick(info, names)
            value = _target(path, rid, name, raw)
            if value is None and target == "energy_per_atom" and atoms.calc is not None and len(atoms):
                try:
                    energy = atoms.get_potential_energy() / len(atoms)
                except Exception:  # no stored energy
                    energy = None
                value = _target(path, rid, "energy (calculator) per atom", energy)
        if value is None:
            out.skipped["missing or non-numeric target"] += 1
            continue
        try:
            structure = AseAtomsAdaptor.get_structure(atoms)
        except Exception:
            out.skipped["not a periodic crystal (no cell)"] += 1
            continue
        out.entries.append(Entry(rid, value, json.dumps(structure.as_dict(), sort_keys=True, default=float),
                                 "pymatgen-dict"))
    return out


def read_source(data_spec) -> SourceData:
    """Dispatch on ``data_spec.source`` (a :class:`traits.spec.DataSpec`)."""
    kind = data_spec.source
    if kind == "sample":
        return read_mp(sample_path(), data_spec.target, data_spec.target_column, kind="sample")
    path = Path(data_spec.path)
    if kind == "mp":
        data = read_mp(path, data_spec.target, data_spec.target_column)
    elif kind == "jarvis":
        data = read_jarvis(path, data_spec.target, data_spec.target_column)
    elif kind == "ase":
        data = read_ase(path, data_spec.target, data_spec.target_column, data_spec.id_column)
    elif kind == "csv":
        data = read_csv(path, data_spec.target, data_spec.target_column, data_spec.id_column,
                        data_spec.structure_column)
    else:  # pragma: no cover - the spec restricts the kinds
        raise DataError(f"unknown data source {kind!r}")
    if not data.entries:
        raise DataError(f"{path}: no usable records ({dict(data.skipped) or 'the file has none'})")
    check_unique_ids(path, data.entries)
    return data


def check_unique_ids(path: Path, entries: list[Entry]) -> None:
    """A DataError naming the file and the first id that two records share."""
    first: dict[str, int] = {}
    for i, entry in enumerate(entries):
        if entry.id in first:
            raise DataError(
                f"{path}: duplicate compound id {entry.id!r} (usable records {first[entry.id] + 1} and {i + 1}); "
                "every compound needs its own id"
            )
        first[entry.id] = i
