"""Warm start: what the first concept search would load, loaded when ``ramdex serve`` starts.

Without it the first free-text concept after a start pays for the model, the text encoder (its
import and weights), the searcher and its calibration sample: seconds, where later queries take
a fraction of one. :class:`WarmUp` does that work in a background thread while the server
already answers: ``/healthz`` at once, ``/readyz`` with a ``warmup`` check that is not ok
(``warming: ...``) until it is done. A query that arrives meanwhile waits for the same load
(every part is built once behind its lock in :class:`~indexer.archive.Archive`), never a second.

Parts that cannot be loaded here do not keep the service unready: the check turns ok and says
what is left for the first query (no text encoder on this machine, nothing ingested yet). The
text encoder is loaded from local files only (a folder or the hub cache): a start never waits on
a download; the first concept query still may. ``api.warm_start=false`` turns it off.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from indexer.archive import Archive

log = logging.getLogger(__name__)

WARM_UP_TEXT = "warm-up"  # the concept encoded and searched once (never shown, never stored)


class WarmUp:
    """Loads the parts of an archive that concept search uses, once, in a background thread.

    Args:
        archive: the archive (the API's ``Services``) to warm.
    """

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self._thread: threading.Thread | None = None
        self._done = threading.Event()
        self._stop = threading.Event()
        self._step = "starting"
        self._started = 0.0
        self._seconds: float | None = None
        self._loaded: list[str] = []
        self._notes: list[str] = []

    def start(self) -> WarmUp:
        """Start the thread (returns at once)."""
        self._started = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="ramdex-warm-up", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Skip the steps not begun yet and wait up to ``timeout_s`` for the current one."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait until warm (True) or ``timeout_s`` passed (False)."""
        return self._done.wait(timeout_s)

    @property
    def done(self) -> bool:
        """Whether the warm-up has finished (successfully or not)."""
        return self._done.is_set()

    def status(self) -> tuple[bool, str]:
        """(ok, detail) for ``/readyz``: not ok while warming."""
        if not self._done.is_set():
            so_far = time.perf_counter() - self._started
            return False, f"warming: {self._step} ({so_far:.1f} s so far)"
        loaded = ", ".join(self._loaded) or "nothing"
        detail = f"warm in {self._seconds:.1f} s: {loaded}"
        return True, detail + "".join(f"; {note}" for note in self._notes)

    # ---------- the steps ----------
    def _run(self) -> None:
        try:
            self._warm()
        except Exception as exc:  # never keeps the service unready: parts load on first use
            log.warning("warm-up failed; parts load on first use", exc_info=True)
            self._notes.append(f"failed ({type(exc).__name__}: {exc}); the rest loads on first use")
        finally:
            self._seconds = time.perf_counter() - self._started
            self._done.set()
            log.info("warm-up: %s", self.status()[1])

    def _begin(self, step: str) -> bool:
        self._step = step
        return not self._stop.is_set()

    def _warm(self) -> None:
        from indexer.archive import TextEncoderNotAvailableError
        from indexer.models import ModelNotAvailableError
        from ram_pp.concepts import encode_concepts, make_concept

        archive = self.archive
        if not self._begin("loading the model"):
            return
        try:
            archive.loaded_model()
        except ModelNotAvailableError as exc:
            self._notes.append(f"model not on this machine ({exc})")
            return
        self._loaded.append("model")
        if not self._begin("loading the text encoder"):
            return
        try:
            encoder = archive.text_encoder(allow_download=False)
        except TextEncoderNotAvailableError:
            self._notes.append(
                "text encoder not on this machine: the first concept query tries to download it"
            )
            return
        if not self._begin("encoding a first concept"):
            return
        bank = encode_concepts([make_concept(WARM_UP_TEXT)], encoder)  # kernels, prefix cache
        self._loaded.append("text encoder")
        if not self._begin("opening the token store"):
            return
        store = archive.token_store()
        if store is None or len(store) == 0:
            self._notes.append("nothing ingested yet: no searcher to warm")
            return
        if not self._begin("building the searcher and its calibration sample"):
            return
        searcher = archive.searcher()
        mode = "exhaustive" if len(store) <= searcher.shortlist else "two_stage"
        searcher.search(bank, names=[WARM_UP_TEXT], top_k=10, mode=mode)
        self._loaded.append(f"searcher ({mode}, {len(store)} assets)")
