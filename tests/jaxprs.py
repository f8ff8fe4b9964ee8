"""Walking traced programs (jaxprs), for tests that check a program's structure."""


def sub_jaxprs(eqn):
    """The jaxprs nested in one equation's parameters: a jit's, a while loop's condition and body, a cond's
    branches (ClosedJaxprs are unwrapped)."""
    for v in eqn.params.values():
        for x in (v if isinstance(v, (tuple, list)) else (v,)):
            if hasattr(x, "jaxpr") and hasattr(x, "consts"):  # ClosedJaxpr
                yield x.jaxpr
            elif hasattr(x, "eqns"):
                yield x
