"""The job: one (config, seed) trained to completion (`run_job`), whatever launched it. Nothing outside this
package imports more of it than `run_job`: the loop (`loop`), the checkpoint (`state`) and the summary
(`provenance`) are its own."""

from .runner import run_job

__all__ = ["run_job"]
