"""The computations behind the book's derivation chapters ("Adam through a second-order lens").

Each module serves one chapter and holds everything it needs beyond plotting calls, so that the
notebooks keep only narrative, parameters, assertions and figures:

* :mod:`adamqlr.lens.diagonals`: Adam's second moment against the diagonals of the empirical
  Fisher and of the generalised Gauss-Newton matrix (chapter "Adam as a diagonal second-order
  method");
* :mod:`adamqlr.lens.products`: dense curvature matrices of tiny networks, per-example gradients and
  the measured cost of curvature products (chapter "Curvature products without matrices");
* :mod:`adamqlr.lens.trajectories`: optimiser paths on the Rosenbrock function (chapter
  "Rosenbrock").
"""
