"""ROS domains claimed per run (mcn_ros.ros.domain): two runs at once on one machine never share one."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mcn_ros.ros.domain import claim_domain_id

HOLD = """
import sys, time
from mcn_ros.ros.domain import claim_domain_id
print(claim_domain_id(int(sys.argv[1]), int(sys.argv[2])), flush=True)
time.sleep(60)
"""


def test_a_domain_held_by_another_process_is_not_claimed_again() -> None:
    first, count = 180, 2  # a range of their own (no DDS runs here): the tests' domain is from 1 to 100
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(first), str(count)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        held = int(holder.stdout.readline())
        mine = claim_domain_id(first, count)
        assert {held, mine} == {first, first + 1}
        with pytest.raises(RuntimeError, match="every ROS domain from 180 to 181 is held"):
            claim_domain_id(first, count)  # both held: the other process's, and this one's own
    finally:
        holder.kill()
        holder.wait()
