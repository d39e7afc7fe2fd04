"""Scorer: load a model directory, check it is the model the manifest describes, and score requests.

The model bytes are read once, hashed, checked for external data and handed to onnxruntime from memory,
so the file that was verified is the file that runs. Arrays are range-checked before `run()`: onnxruntime
on CUDA reads out-of-range embedding rows silently. A Scorer is immutable after `load`, and
onnxruntime's `run` is thread-safe, so one Scorer may serve many threads.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from din_runtime.encode import Encoded, _as_rows, column, encode_dense, encode_histories, encode_ids, encode_rows
from din_runtime.errors import DeviceError, DinRuntimeError, InputError, IntegrityError
from din_runtime.features import DENSE, HISTORY, LENGTH
from din_runtime.manifest import Manifest, load_manifest

log = logging.getLogger("din_runtime")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
GPU_INSTALL = "pip uninstall -y onnxruntime && pip install 'din-toolkit[gpu]'"
_DTYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32,
           "tensor(float16)": np.float16, "tensor(double)": np.float64}
# On CPU a batch is scored in runs of about POSITIONS_PER_RUN history positions (rows x history width)
# for the paper's 80-wide attention unit, and proportionally more for a narrower one: one run's
# per-position activations (positions x 80 floats, 655 KB) then stay in cache instead of streaming through
# memory once per elementwise pass, and a narrow unit, with few FLOPs per position, needs longer runs to
# amortise a run's fixed cost. docs/runtime.md ("Chunking") has the figures.
POSITIONS_PER_RUN = 2048
REFERENCE_WIDTH = 80
MIN_POSITIONS_PER_RUN, MAX_POSITIONS_PER_RUN = 512, 16384
# Native-order integer dtypes -> the unsigned dtype of their width, for a range check in one argmax
_UNSIGNED = {np.dtype(t): np.dtype(f"u{np.dtype(t).itemsize}")
             for t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)}


_MISSING = object()
_FLOAT32 = np.dtype(np.float32)


def positions_per_run(attention_width: int | None = None) -> int:
    """History positions per onnxruntime run on CPU for an attention unit whose widest layer is
    `attention_width` (Manifest.attention_width; None: POSITIONS_PER_RUN)."""
    if attention_width is None:
        return POSITIONS_PER_RUN
    scaled = POSITIONS_PER_RUN * REFERENCE_WIDTH // attention_width
    return min(MAX_POSITIONS_PER_RUN, max(MIN_POSITIONS_PER_RUN, scaled))


def rows_per_run(width: int, attention_width: int | None = None) -> int:
    """Rows per onnxruntime run on CPU for histories `width` wide (at least 1), `positions_per_run` positions."""
    return max(1, positions_per_run(attention_width) // max(width, 1))


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as e:
        raise DinRuntimeError("scoring needs onnxruntime: pip install 'din-toolkit[cpu]' "
                              "(or 'din-toolkit[gpu]' for CUDA)") from e
    return onnxruntime


class Scorer:
    """Scores DIN requests with an exported model. Build it with `Scorer.load(model_dir)`."""

    __slots__ = ("_manifest", "_session", "_device", "_dtypes", "_outputs", "_new_session", "_candidates", "_lock",
                 "_checks", "_names", "_width_input", "_short", "_short_width")

    def __init__(self, *_: Any, **__: Any) -> None:
        raise TypeError("build a Scorer with Scorer.load(model_dir, device=..., threads=...): it checks the model "
                        "directory and creates the onnxruntime session")

    @classmethod
    def _create(cls, manifest: Manifest, session: Any, device: str, new_session: Callable[[bytes], Any],
                short: Any = None) -> Scorer:
        """The Scorer of a loaded, checked manifest and session; `new_session` makes the candidate graph's;
        `short`: the short-history graph's checked session, or None to score every batch with `session`."""
        self = object.__new__(cls)
        self._manifest = manifest
        self._session = session
        self._short = short
        # batches at most this wide go to `short` (-1: none do, not even an all-empty batch of width 0)
        self._short_width = manifest.short_max_width if short is not None else -1
        self._device = device
        self._dtypes = {i.name: np.dtype(_DTYPES[i.type]) for i in session.get_inputs()}
        self._outputs = tuple(o.name for o in session.get_outputs())
        self._new_session = new_session
        # The candidate graph's session, created at the first score_candidates call (see _candidate_session)
        self._candidates: Any = None
        self._lock = threading.Lock()
        # Per input, in the graph's order: (name, kind, ndim, limit, vocabulary, dtype, the dtype's unsigned
        # twin for the range check): built once, so a call looks nothing up
        spec = manifest.spec
        self._names = frozenset(spec.inputs)
        checks = []
        for name, kind in spec.input_kinds.items():
            vocab = spec.vocab_of(name)
            limit = len(spec.dense) if kind is DENSE else spec.vocab_sizes[vocab] if vocab else 0
            ndim = 2 if kind in (HISTORY, DENSE) else 1
            checks.append((name, kind, ndim, limit, vocab, self._dtypes[name], _UNSIGNED.get(self._dtypes[name])))
        self._checks: tuple[tuple[str, str, int, int, str | None, np.dtype, np.dtype | None], ...] = tuple(checks)
        self._width_input = spec.histories[0]
        return self

    @classmethod
    def load(cls, model_dir: str | Path, device: str = "cpu", threads: int | None = None,
             short_history: bool = True) -> Scorer:
        """Load MODEL_DIR on "cpu", "cuda" or "auto" (CUDA if usable, else CPU with a warning).

        `short_history`: with one CPU thread (`threads=1`), also load the model directory's short-history
        graph, if it has one, and score batches at most its max_width wide with it (docs/runtime.md)."""
        ort = _import_onnxruntime()
        if device not in ("cpu", "cuda", "auto"):
            raise DeviceError(f"device must be 'cpu', 'cuda' or 'auto', got {device!r}")
        if threads is not None and (type(threads) is not int or threads < 1):
            raise DinRuntimeError(f"threads must be a positive integer, got {threads!r}")
        manifest = load_manifest(model_dir)
        data = _read_verified(manifest.model_path, manifest.sha256)

        want_cuda = device == "cuda" or (device == "auto" and CUDA in ort.get_available_providers())
        if device == "cuda" and CUDA not in ort.get_available_providers():
            raise DeviceError(f"device 'cuda' needs the CUDAExecutionProvider, which this onnxruntime lacks "
                              f"(it has {ort.get_available_providers()}); install the GPU build: {GPU_INSTALL}")
        if device == "auto" and not want_cuda:
            log.warning("no CUDAExecutionProvider in this onnxruntime; scoring on CPU")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            session = ort.InferenceSession(data, sess_options=options, providers=[CUDA, CPU] if want_cuda else [CPU])
        except Exception as e:  # onnxruntime raises its own pybind exception types
            raise IntegrityError(f"onnxruntime cannot load {manifest.model_path}: {e}") from e
        actual = "cuda" if CUDA in session.get_providers() else "cpu"
        if want_cuda and actual == "cpu":
            if device == "cuda":
                raise DeviceError("the CUDAExecutionProvider failed to start (see onnxruntime's log: CUDA or "
                                  "cuDNN libraries missing?); use --device cpu or fix the CUDA install")
            log.warning("the CUDAExecutionProvider failed to start; scoring on CPU")
        _check_graph(manifest, session, manifest.model_file)
        providers = [CUDA, CPU] if actual == "cuda" else [CPU]

        def new_session(data: bytes) -> Any:
            return ort.InferenceSession(data, sess_options=options, providers=providers)

        # Only where it pays (docs/runtime.md, "The short-history graph"): on CPU, with one thread. With more,
        # each session's intra-op threads spin after its run and slow the other session's next run.
        wanted = short_history and actual == "cpu" and threads == 1
        short = _short_session(manifest, session, new_session) if wanted else None
        return cls._create(manifest, session, actual, new_session, short)

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    @property
    def input_names(self) -> tuple[str, ...]:
        return self._manifest.inputs

    @property
    def device(self) -> str:
        """"cpu" or "cuda": where the session actually runs."""
        return self._device

    def encode(self, rows: Sequence[Mapping[str, Any]]) -> Encoded:
        """Request rows -> model inputs and OOV counts (see din_runtime.encode)."""
        return encode_rows(self._manifest, rows)

    def score(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Click probabilities of request rows, in order."""
        return self._run(self.encode(rows).arrays, "prob")

    def score_arrays(self, arrays: Mapping[str, Any] | None = None, /, **named: Any) -> np.ndarray:
        """Probabilities for already-encoded inputs (a mapping, keywords, or both), validated and cast."""
        given = arrays if not named and type(arrays) is dict else {**(arrays or {}), **named}
        return self._run_feeds(*self._check_arrays(given), "prob")

    def score_candidates(self, user: Mapping[str, Any], history: Mapping[str, Sequence[Any]],
                         candidates: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Probabilities of N candidates for one user, encoding the user's side once.

        `user`: the sparse profile fields and dense fields; `history`: each behaviour history field ->
        list of ids (oldest first); `candidates`: one mapping per candidate with the behaviour targets,
        which may also override any sparse or dense field of `user` (item-side or context features).
        Equals `score` of rows {**user, **history, **candidate} (up to float rounding; int8 models
        quantise each run's activations with their own scale, so there the two may differ by more).

        A model directory with a candidate graph (manifest "candidates") scores them all in it, the
        history gathered and the attention's first layer computed once for every candidate; without one
        the user's row is repeated through the main graph.
        """
        arrays = self._candidate_arrays(user, history, candidates)
        session = self._candidate_session()
        if session is None:
            n = len(arrays[self._manifest.targets[0]])
            shared = (*self._manifest.histories, "hist_len")
            return self._run({k: np.repeat(v, n, axis=0) if k in shared else v for k, v in arrays.items()}, "prob")
        return self._run_candidates(session, arrays)

    def explain(self, rows: Sequence[Mapping[str, Any]]) -> list[np.ndarray]:
        """Attention weight of each kept history item, per row (models exported with attention)."""
        if "attention" not in self._outputs:
            raise DinRuntimeError("this model has no 'attention' output; export it with --with-attention")
        arrays = self.encode(rows).arrays
        weights = self._run(arrays, "attention")
        return [weights[i, :n] for i, n in enumerate(arrays["hist_len"])]

    def _run(self, arrays: Mapping[str, np.ndarray], output: str) -> np.ndarray:
        dtypes = self._dtypes
        feeds = {name: _as_feed(arrays[name], dtypes[name]) for name in self._manifest.inputs}
        return self._run_feeds(feeds, len(feeds["hist_len"]), feeds[self._width_input].shape[1], output)

    def _run_feeds(self, feeds: dict[str, np.ndarray], batch: int, width: int, output: str) -> np.ndarray:
        """`output` for feeds of the graph's dtypes, C-contiguous, in the graph's input order."""
        if batch == 0:
            return np.zeros((0,) if output == "prob" else (0, 0), dtype=np.float32)
        session = self._short if width <= self._short_width else self._session
        # the run size only when it can matter: B=1 pays for nothing it does not use
        if (batch == 1 or self._device != "cpu"
                or batch <= (step := rows_per_run(width, self._manifest.attention_width))):
            # one run, no slices (the common case at small batches), with _run_once and _checked inline
            try:
                (result,) = session.run([output], feeds)
            except Exception as e:  # onnxruntime raises its own pybind exception types
                raise DinRuntimeError(f"onnxruntime failed to score the batch: {e}") from e
            if result.shape != ((batch,) if output == "prob" else (batch, width)):
                self._checked(result, batch, width, output)
        else:
            result = np.concatenate([
                self._checked(self._run_once(session, {k: v[start:start + step] for k, v in feeds.items()},
                                             output), min(step, batch - start), width, output)
                for start in range(0, batch, step)])
        return result.astype(np.float32) if result.dtype is not _FLOAT32 and result.dtype == np.float16 else result

    @staticmethod
    def _checked(result: np.ndarray, rows: int, width: int, output: str) -> np.ndarray:
        expected = (rows,) if output == "prob" else (rows, width)
        if result.shape != expected:
            # The graph is the one the manifest hashed, but nothing else vouches for what it computes.
            raise IntegrityError(f"the model returned {output!r} of shape {result.shape} for inputs of batch "
                                 f"{rows}; expected {expected}: this is not a DIN model directory's graph")
        return result

    def _run_candidates(self, session: Any, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        """The candidate graph over candidates in runs of `rows_per_run` (C x L positions per run, as in _run)."""
        m = self._manifest
        n = len(arrays[m.targets[0]])
        if n == 0:
            return np.zeros((0,), dtype=np.float32)
        feeds = {name: _as_feed(arrays[name], self._dtypes[name]) for name in m.inputs}
        shared = (*m.histories, "hist_len")
        width = feeds[self._width_input].shape[1]
        step = rows_per_run(width, m.attention_width) if self._device == "cpu" else n
        results = []
        for start in range(0, n, step):
            rows = min(step, n - start)
            result = self._run_once(session, {k: v if k in shared else v[start:start + rows]
                                              for k, v in feeds.items()}, "prob")
            if result.shape != (rows,):
                raise IntegrityError(f"{m.candidate_file} returned 'prob' of shape {result.shape} for {rows} "
                                     f"candidates; expected ({rows},): this is not a DIN candidate graph")
            results.append(result)
        result = results[0] if len(results) == 1 else np.concatenate(results)
        return result.astype(np.float32) if result.dtype == np.float16 else result

    @staticmethod
    def _run_once(session: Any, feeds: dict[str, np.ndarray], output: str) -> np.ndarray:
        try:
            (result,) = session.run([output], feeds)
        except Exception as e:  # onnxruntime raises its own pybind exception types
            raise DinRuntimeError(f"onnxruntime failed to score the batch: {e}") from e
        return result

    def _candidate_session(self) -> Any:
        """The candidate graph's session, or None without one. Created on first use, so `load` (and every
        caller that never scores candidates) pays neither its hashing nor its session; its integrity is
        checked then, as `load` checks model.onnx."""
        m = self._manifest
        if m.candidate_path is None:
            return None
        if self._candidates is not None:
            return self._candidates
        with self._lock:
            if self._candidates is None:
                data = _read_verified(m.candidate_path, m.candidate_sha256)
                try:
                    session = self._new_session(data)
                except Exception as e:  # onnxruntime raises its own pybind exception types
                    raise IntegrityError(f"onnxruntime cannot load {m.candidate_path}: {e}") from e
                names = tuple(i.name for i in session.get_inputs())
                if names != m.inputs or "prob" not in [o.name for o in session.get_outputs()]:
                    raise IntegrityError(f"{m.candidate_path} has inputs {list(names)} and outputs "
                                         f"{[o.name for o in session.get_outputs()]}; the manifest declares "
                                         f"{list(m.inputs)} and 'prob'")
                self._candidates = session
            return self._candidates

    def _check_arrays(self, given: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], int, int]:
        """(feeds, batch, width): the inputs as C-contiguous arrays of the graph's dtypes, each checked in one
        pass over its values: ids by their largest value seen as unsigned (a negative id is >= 2**63 there;
        a single id is read directly), dense values by their largest and smallest (argmax finds a NaN first).
        Only a failed pass looks for the first bad row, so the errors are those of an element-wise check.
        argmax, not max(): a ufunc call costs several microseconds (its floating-point status checks), a
        large share of a B=1 call; for the same reason an array already of the graph's dtype and layout is
        passed as it is, without a conversion call."""
        if len(given) > len(self._checks):
            self._refuse_unknown(given)
        checked: dict[str, np.ndarray] = {}
        batch = width = -1
        for name, kind, ndim, limit, vocab, dtype, unsigned in self._checks:
            a = given.get(name, _MISSING)
            if type(a) is not np.ndarray:
                if a is _MISSING:
                    # an unknown name is reported first, as a misspelt input both adds one and lacks one;
                    # when every input is present, no more names than inputs means no unknown one
                    self._refuse_unknown(given)
                    raise InputError("missing input array", field=name)
                a = np.asarray(a)
            shape = a.shape
            if len(shape) != ndim:
                raise InputError(f"expected {ndim} dimensions, got shape {shape}", field=name)
            given_dtype = a.dtype
            size = a.size
            if kind is DENSE:
                if given_dtype.kind not in "iuf" or shape[1] != limit:
                    raise InputError(f"expected numbers of shape (batch, {limit}), got {given_dtype} {shape}",
                                     field=name)
                if given_dtype is not dtype:
                    with np.errstate(over="ignore"):
                        a = a.astype(dtype)
                    given_dtype = dtype
                if size and not (math.isfinite(a.item(a.argmax())) and math.isfinite(a.item(a.argmin()))):
                    _first_bad(~np.isfinite(a), name, f"is not finite as {a.dtype}")
            else:
                if given_dtype is not dtype:
                    unsigned = _UNSIGNED.get(given_dtype)  # None: not an integer, or not in native byte order
                    if unsigned is None and given_dtype.kind not in "iu":
                        raise InputError(f"ids must be integers (floats lose ids above 2**24), got {given_dtype}",
                                         field=name)
                if kind is LENGTH:
                    limit = width + 1
                if size == 1:  # a single id (B=1): read it, no array call
                    bad = not 0 <= a.item() < limit
                elif size and unsigned is not None:
                    u = a.view(unsigned)
                    bad = u.item(u.argmax()) >= limit
                else:  # empty, or non-native byte order (rare): the exact check decides
                    bad = size > 0
                if bad:
                    if kind is LENGTH:
                        _first_bad((a < 0) | (a > width), name, f"must lie in [0, {width}], the history width")
                    _first_bad((a < 0) | (a >= limit), name, f"index outside [0, {limit}) of vocabulary {vocab!r}")
            if batch < 0:
                batch = shape[0]
            elif shape[0] != batch:
                raise InputError(f"batch size {shape[0]} differs from {self._manifest.inputs[0]!r}'s {batch}",
                                 field=name)
            if kind is HISTORY:
                if width < 0:
                    width = shape[1]
                elif shape[1] != width:
                    raise InputError(f"width {shape[1]} differs from {self._manifest.histories[0]!r}'s", field=name)
            # a single element is contiguous whatever its strides: no flags object to build
            checked[name] = a if given_dtype is dtype and (size == 1 or a.flags.c_contiguous) else \
                np.ascontiguousarray(a, dtype=dtype)
        return checked, batch, width

    def _refuse_unknown(self, given: Mapping[str, Any]) -> None:
        unknown = sorted(set(given) - self._names)
        if unknown:
            raise InputError(f"not an input of this model (inputs: {', '.join(self._manifest.inputs)})",
                             field=unknown[0])

    def _candidate_arrays(self, user: Mapping[str, Any], history: Mapping[str, Sequence[Any]],
                          candidates: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
        m = self._manifest.spec
        vocabs = self._manifest.vocabs
        for what, value in (("user", user), ("history", history)):
            if not isinstance(value, Mapping):
                raise InputError(f"{what} must be a mapping of field -> value, got {type(value).__name__}")
        candidates = _as_rows(candidates)
        histories = m.histories
        for i, candidate in enumerate(candidates):
            misplaced = next((h for h in histories if h in candidate), None)
            if misplaced:
                raise InputError("histories belong in `history`, not in a candidate", row=i, field=misplaced)
        missing = next((h for h in m.histories if h not in history), None)
        if missing:
            raise InputError("missing from `history`", field=missing)
        try:
            arrays = dict(encode_histories(self._manifest, {h: [history[h]] for h in m.histories})[0])  # (1, L)
        except InputError as e:
            raise InputError(f"history: {e.reason}", field=e.field) from None
        for s in m.sparse:
            arrays[s.name] = self._per_candidate(
                s.name, user, candidates, lambda v, s=s: encode_ids(v, vocabs[s.vocab], s.name)[0])
        for b in m.behaviour:
            arrays[b.target] = encode_ids(column(candidates, b.target), vocabs[b.vocab], b.target)[0]
        if m.dense:
            arrays["dense"] = np.stack([self._per_candidate(d, user, candidates, lambda v, d=d: encode_dense(v, d))
                                        for d in m.dense_names], axis=1)
        return arrays

    @staticmethod
    def _per_candidate(name: str, user: Mapping[str, Any], candidates: Sequence[Mapping[str, Any]],
                       encode: Callable[[list[Any]], np.ndarray]) -> np.ndarray:
        """A user-side field, encoded once and repeated, unless some candidate overrides it."""
        if any(name in c for c in candidates):
            values = []
            for i, c in enumerate(candidates):
                if name not in c and name not in user:
                    raise InputError("missing from the candidate and from `user`", row=i, field=name)
                values.append(c[name] if name in c else user[name])
            return encode(values)
        if name not in user:
            raise InputError("missing from `user`", field=name)
        try:
            one = encode([user[name]])
        except InputError as e:
            raise InputError(f"user: {e.reason}", field=name) from None
        return np.repeat(one, len(candidates), axis=0)


def _as_feed(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """`a` as a C-contiguous array of `dtype`; itself when it is one (no conversion call: microseconds at B=1)."""
    return a if a.dtype is dtype and a.flags.c_contiguous else np.ascontiguousarray(a, dtype=dtype)


def _first_bad(bad: np.ndarray, field: str, reason: str) -> None:
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise InputError(reason, row=row, field=field)


def _read_verified(path: Path, sha256: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise IntegrityError(f"cannot read {path}: {e.strerror}") from e
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise IntegrityError(f"{path} has SHA-256 {digest}, the manifest says {sha256}: the file was "
                             f"changed or damaged after export")
    try:
        external = external_data_tensors(data)
    except ValueError as e:
        raise IntegrityError(f"{path} is not a valid ONNX model: {e}") from e
    if external:
        raise IntegrityError(f"{path} keeps tensors in external data files ({', '.join(external[:5])}); model "
                             f"directories must be self-contained: re-export it (external data is refused because "
                             f"its paths can reach files outside the directory)")
    return data


def _check_graph(manifest: Manifest, session: Any, file: str) -> None:
    inputs = session.get_inputs()
    names = tuple(i.name for i in inputs)
    if names != manifest.inputs:
        raise IntegrityError(f"{file} inputs {list(names)} differ from the manifest's {list(manifest.inputs)}")
    for i in inputs:
        kinds = ("tensor(float)", "tensor(float16)", "tensor(double)") if i.name == "dense" else \
            ("tensor(int64)", "tensor(int32)")
        if i.type not in kinds:
            raise IntegrityError(f"{file} input {i.name!r} has type {i.type}, expected one of {kinds}")
    outputs = [o.name for o in session.get_outputs()]
    if "prob" not in outputs:
        raise IntegrityError(f"{file} has no 'prob' output (outputs: {outputs})")


def _short_session(manifest: Manifest, main: Any, new_session: Callable[[bytes], Any]) -> Any:
    """The short-history graph's session (manifest "short_history"), or None without one; its bytes are
    checked like model.onnx's, and it must take and return exactly what model.onnx does, since the Scorer
    feeds both alike."""
    path = manifest.short_path
    if path is None:
        return None
    data = _read_verified(path, manifest.short_sha256)
    try:
        session = new_session(data)
    except Exception as e:  # onnxruntime raises its own pybind exception types
        raise IntegrityError(f"onnxruntime cannot load {path}: {e}") from e
    _check_graph(manifest, session, manifest.short_file)
    ours = ([(i.name, i.type) for i in session.get_inputs()], [o.name for o in session.get_outputs()])
    theirs = ([(i.name, i.type) for i in main.get_inputs()], [o.name for o in main.get_outputs()])
    if ours != theirs:
        raise IntegrityError(f"{path} takes {ours[0]} and returns {ours[1]}; {manifest.model_file} takes "
                             f"{theirs[0]} and returns {theirs[1]}: the two must have one interface")
    return session


# Protobuf field numbers (onnx.proto) of the messages that can hold a TensorProto, per message kind.
_CHILDREN: dict[str, dict[int, str]] = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "function": {7: "node", 11: "attribute"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "tensor": {},
}
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION, _EXTERNAL = 8, 13, 14, 1


def external_data_tensors(data: bytes) -> list[str]:
    """Names of the tensors of a serialized ONNX model whose data lives outside it.

    Walks the protobuf wire format directly, because onnx is not a runtime dependency and onnxruntime,
    given bytes, would look for external files relative to the current directory.
    """
    view = memoryview(data)
    found = []
    stack = [(0, len(view), "model")]
    while stack:
        pos, end, kind = stack.pop()
        children = _CHILDREN[kind]
        name, external = "", False
        while pos < end:
            tag, pos = _varint(view, pos, end)
            field, wire = tag >> 3, tag & 7
            if wire == 0:
                value, pos = _varint(view, pos, end)
                external |= kind == "tensor" and field == _TENSOR_DATA_LOCATION and value == _EXTERNAL
            elif wire == 2:
                length, pos = _varint(view, pos, end)
                if pos + length > end:
                    raise ValueError("truncated protobuf field")
                if field in children:
                    stack.append((pos, pos + length, children[field]))
                elif kind == "tensor" and field == _TENSOR_EXTERNAL_DATA:
                    external = True
                elif kind == "tensor" and field == _TENSOR_NAME:
                    name = bytes(view[pos:pos + length]).decode("utf-8", "replace")
                pos += length
            elif wire in (1, 5):
                pos += 8 if wire == 1 else 4
            else:
                raise ValueError(f"unexpected protobuf wire type {wire}")
        if pos != end:
            raise ValueError("truncated protobuf message")
        if external:
            found.append(name or "<unnamed tensor>")
    return found


def _varint(view: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ValueError("truncated or oversized varint")
        byte = view[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
