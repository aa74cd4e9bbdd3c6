"""start_ray: one retry when a local Ray node misses Ray's fixed startup wait, else a one-line error.

A stand-in for the `ray` module is enough here: what is tested is our retry and error policy
around `ray.init`, not Ray (tests/scaleout/test_ray_backend.py starts the real one)."""

from __future__ import annotations

import pytest

from secure_fedrl.errors import ConfigError
from secure_fedrl.runtime.ray_backend import start_ray

TIMEOUT = Exception("The current node timed out during startup. This could happen because some of the "
                    "raylet failed to startup or the GCS has become overloaded.")


class FakeRay:
    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.inits: list[dict] = []
        self.shutdowns = 0

    def init(self, **kwargs) -> None:
        self.inits.append(kwargs)
        if self.failures:
            raise self.failures.pop(0)

    def shutdown(self) -> None:
        self.shutdowns += 1


def test_a_startup_timeout_is_retried_once_after_a_shutdown():
    ray = FakeRay(TIMEOUT)
    start_ray(ray, num_cpus=2, include_dashboard=False)
    assert ray.inits == [{"num_cpus": 2, "include_dashboard": False}] * 2
    assert ray.shutdowns == 1


def test_no_retry_when_the_first_start_succeeds():
    ray = FakeRay()
    start_ray(ray, num_cpus=1)
    assert len(ray.inits) == 1 and ray.shutdowns == 0


def test_two_timeouts_give_a_one_line_config_error():
    ray = FakeRay(TIMEOUT, TIMEOUT, TIMEOUT)
    with pytest.raises(ConfigError, match=r"^--backend ray: a local Ray node did not start .* 2 attempts") as e:
        start_ray(ray, num_cpus=2)
    assert "\n" not in str(e.value) and len(ray.inits) == 2 and ray.shutdowns == 2


def test_a_timeout_at_a_head_address_names_it():
    ray = FakeRay(TIMEOUT, TIMEOUT)
    with pytest.raises(ConfigError, match="the Ray head at 10.0.0.1:6379"):
        start_ray(ray, address="10.0.0.1:6379")


@pytest.mark.parametrize("exc", [ConnectionError("refused"), ValueError("bad address"), RuntimeError("gcs")])
def test_connection_and_argument_errors_are_config_errors_without_retry(exc):
    ray = FakeRay(exc)
    with pytest.raises(ConfigError, match=r"^--ray-address 1.2.3.4:1: cannot connect to Ray \("):
        start_ray(ray, address="1.2.3.4:1")
    assert len(ray.inits) == 1 and ray.shutdowns == 0


def test_any_other_exception_is_not_swallowed():
    ray = FakeRay(Exception("something else"))
    with pytest.raises(Exception, match="something else"):
        start_ray(ray)
    assert len(ray.inits) == 1
