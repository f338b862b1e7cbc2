"""Stop cleanly when the scheduler asks: SIGTERM or SIGUSR1 (what SLURM sends before a
time limit) -> save a checkpoint at the next step boundary -> exit with EXIT_PREEMPTED.
SIGHUP (the terminal that started the run was closed) does the same, unless it is ignored (nohup).

Other commands turn SIGTERM and SIGHUP into KeyboardInterrupt instead (cli.py): they have no
step boundary to wait for, only a temporary folder to remove.
"""

import signal

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: the SLURM script requeues the job on this code
EXIT_DIVERGED = 3
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP)


class StopRequest:
    """Remembers a stop signal. The loop shares the flag across ranks with its per-step all-reduce,
    because a signal may reach some ranks and not others, and all must stop at the same step."""

    def __init__(self):
        self.signal = None
        for sig in STOP_SIGNALS:
            if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
                continue  # started under nohup: a closed terminal must not stop the run
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name


def leave_stop_signals_to_the_trainer(worker_id):
    """For DataLoader workers: a scheduler signals the whole process group, and workers that died of it
    would take the training process down before it could save; the trainer decides when to stop."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
