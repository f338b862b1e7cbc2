"""Stop signals of a training process: SIGHUP (a closed terminal) stops it as SIGTERM does, unless nohup
ignores it."""

import os
import signal
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.slow


def signalled(code):
    """Run `code` (which makes a StopRequest named stop, then is sent SIGHUP) in a fresh interpreter."""
    program = ("import os, signal\nfrom spanbert_ds.run.signals import StopRequest\n" + code +
               "\nos.kill(os.getpid(), signal.SIGHUP)\nprint(stop.signal)")
    # SIGHUP as a terminal leaves it, whatever the test runner inherited (under nohup it is ignored, and the
    # trainer keeps an ignored HUP ignored on purpose)
    return subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, cwd=REPO, timeout=60,
                          env=dict(os.environ, PYTHONPATH=REPO),
                          preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))


def test_sighup_asks_for_a_stop_at_the_next_step_like_sigterm():
    done = signalled("stop = StopRequest()")
    assert done.returncode == 0 and done.stdout.strip() == "SIGHUP", done.stderr


def test_sighup_ignored_by_nohup_stays_ignored():
    done = signalled("signal.signal(signal.SIGHUP, signal.SIG_IGN)\nstop = StopRequest()")
    assert done.returncode == 0 and done.stdout.strip() == "None", done.stderr
