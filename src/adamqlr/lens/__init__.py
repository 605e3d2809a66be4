"""The computations behind the book's derivation chapters ("Adam through a second-order lens").

Each module serves one chapter and holds everything it needs beyond plotting calls, so that the
notebooks keep only narrative, parameters, assertions and figure calls
(:mod:`adamqlr.plots.derivations`):

* :mod:`adamqlr.lens.adam` and :mod:`adamqlr.lens.diagonals`: Adam's moments, its ``v_hat``
  against the exact diagonals of the empirical Fisher and of the generalised Gauss-Newton matrix,
  and the rescaling argument for the learning rate ("Adam as a diagonal second-order method"),
  with :mod:`adamqlr.lens.bootstrap` for the intervals on its correlations;
* :mod:`adamqlr.lens.line`: the loss and its damped quadratic models along AdamQLR's direction
  ("The step size from a damped quadratic model");
* :mod:`adamqlr.lens.damping`: damping policies, the reduction ratio on the step's batch and on
  held-out data, and the exact-quadratic case ("Levenberg-Marquardt damping and the reduction
  ratio");
* :mod:`adamqlr.lens.products`: the tiny problems on real data and the measured cost of curvature
  products ("Curvature products without matrices");
* :mod:`adamqlr.lens.trajectories`: optimiser paths on the Rosenbrock function ("Rosenbrock");
* :mod:`adamqlr.lens.official` and :mod:`adamqlr.lens.official_divergence`: the authors' AdamQLR
  step and stopping rule written plainly, and whether it diverges at small batch sizes as ours
  does ("Sensitivity to the hyperparameters");
* :mod:`adamqlr.lens.training`: the small training loops and data access these share.

The dense float64 matrices the chapters set beside the library's products (Jacobian, GGN, Hessian,
Fishers, per-example gradients) are :mod:`adamqlr.testing`'s, the oracles the test suite uses;
Adam's moments and direction are :mod:`adamqlr.algorithm`'s, and a whole split's loss is
:func:`adamqlr.experiment.loop.evaluate`.
"""
