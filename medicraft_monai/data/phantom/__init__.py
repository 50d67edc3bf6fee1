"""The procedural OCT phantom: realistic radial OCT exams with exact ground truth.

An exam is ``n_planes`` radial B-scans through the foveal centre, one every ``360 / n_planes`` degrees, all cut from
ONE three-dimensional eye model per exam, so the planes agree with each other:

* a retinal layer-thickness map with a foveal pit at the centre (the inner layers thin to zero in the pit, the
  outer nuclear layer and the photoreceptors continue and thicken),
* the optic nerve head (ONH) on the nasal side (set by laterality): Bruch's membrane opening, the retina thinning
  into the disc and a cup, no RPE or choroid inside the opening,
* retinal vessels as curves radiating from the ONH in the en-face plane (arcades, nasal vessels, macular branches
  and small perifoveal vessels); a B-scan shows each crossing as a bright cross-section with a shadow below,
* a choroid with a vessel-like texture, the sclera fading below it,
* a lesion as a 2-D footprint in the en-face plane with a height profile: a choroidal nevus (flat,
  hyper-reflective choroidal thickening under an intact RPE) or a melanoma (a dome-shaped choroidal mass lifting
  the RPE, with subretinal fluid between the photoreceptors and the RPE).

The B-scan is rendered in the linear intensity domain (layer reflectivities, attenuation along depth, vessel and
lesion shadows, signal fall-off with depth, a noise floor and multiplicative gamma speckle) and log-compressed to
a display image in ``[0, 1]`` (float32), as an OCT device shows it.

Geometry conventions (the project's): rows are depth (row 0 at the vitreous side), columns the scan line; the
plane angle is the direction of the scan line from its first to its last column in the en-face plane seen from
the front, counter-clockwise from the viewer's right. Column ``c`` lies at ``s = (c - W // 2) * dx`` mm along the
line, so the fovea (the line's centre) is column ``W // 2``. A right eye's ONH lies to the viewer's right of the
fovea (``+x``), a left eye's to the left; the left eye is the mirror image of the right eye.

Ground truth (:class:`BScanTruth`) uses continuous row coordinates with pixel centres at integers: a boundary at
row ``z`` separates the pixels ``i < z`` (above) from ``i >= z`` (below).

Every draw comes from :class:`numpy.random.Generator` objects seeded from the exam seed (no global state), in
separate streams for anatomy, vessels, lesion, defect and per-plane noise: the same seed gives the same eye whatever
the class, laterality or defect, and :meth:`OCTPhantom.generate_bscan` reproduces the exam's plane exactly.

The package, one module per part (everything public is re-exported here):

- :mod:`.config`: the vocabularies (layers, lesion kinds, classes, defects), :class:`PhantomConfig`, the seeded
  random streams;
- :mod:`.eye`: the three-dimensional eye model of one exam;
- :mod:`.renderer`: :class:`OCTPhantom`, which cuts and renders the B-scans;
- :mod:`.truth`: :class:`BScanTruth`, :class:`PhantomExam`, :func:`load_phantom_truth`;
- :mod:`.writer`: :func:`write_phantom_dataset` and :func:`make_phantom_dataset` (data sets on disk).
"""

from medicraft_monai.data.phantom.config import DEFAULT_CLASSES, DEFECTS, LAYER_BOUNDARIES, LESION_KINDS, PhantomConfig
from medicraft_monai.data.phantom.renderer import OCTPhantom
from medicraft_monai.data.phantom.truth import BScanTruth, PhantomExam, load_phantom_truth
from medicraft_monai.data.phantom.writer import make_phantom_dataset, write_phantom_dataset

__all__ = [
    "DEFAULT_CLASSES",
    "DEFECTS",
    "LAYER_BOUNDARIES",
    "LESION_KINDS",
    "BScanTruth",
    "OCTPhantom",
    "PhantomConfig",
    "PhantomExam",
    "load_phantom_truth",
    "make_phantom_dataset",
    "write_phantom_dataset",
]
