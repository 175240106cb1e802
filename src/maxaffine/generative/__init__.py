"""Generative networks as splines (issue 16): a generator built from affine layers and
ReLUs is continuous piecewise affine in its latent code, ``G(z) = A_r z + b_r`` on
each latent region ``r``.

- :mod:`.inversion`: :func:`invert`, the latent code of an output, from all or some
  of its entries (Ma, Balestriero & Baraniuk, "Invertibility of Convolutional
  Generative Networks from Partial Measurements", NeurIPS 2019), exactly by a walk
  over latent regions or by the paper's gradient descent.
- :mod:`.likelihood`: :func:`posterior` and :func:`log_likelihood` with a Gaussian
  latent and Gaussian noise: a mixture of truncated Gaussians, one per latent region
  (Balestriero, Paris & Baraniuk, "Analytical Probability Distributions and
  EM-Learning for Deep Generative Networks", NeurIPS 2020).
- :mod:`.em`: :func:`fit_em`, EM learning of a generator with that exact posterior
  (same paper, sec. 4); :class:`EMFit`.
"""

from .em import EMFit, fit_em
from .inversion import Inversion, invert
from .likelihood import GeneratorPosterior, log_likelihood, posterior

__all__: list[str] = [
    "EMFit",
    "GeneratorPosterior",
    "Inversion",
    "fit_em",
    "invert",
    "log_likelihood",
    "posterior",
]
