"""jaxdiff: a pure-JAX, functional research codebase for diffusion models.

    import jaxdiff as jd
    schedule = jd.schedules.linear(1000)
"""

from jaxdiff import conditioning, schedules

__all__ = ["conditioning", "schedules"]
