"""DICOMweb: select studies on a PACS (QIDO-RS), retrieve them as local study folders (WADO-RS), store SEG (STOW-RS).

A server is named by its DICOMweb root, ``dicomweb+http://HOST:8042/dicom-web`` (or ``dicomweb+https://...``; a
plain ``http(s)://`` URL is accepted too). :class:`DicomWebSource` selects studies by StudyInstanceUID,
SeriesInstanceUID or a QIDO-RS query (``{"PatientID": "PGBM-001", "StudyDate": "19911119"}``), retrieves each
selected study into a local folder laid out like an exported study (one folder per series, named
``<SeriesNumber>-<SeriesDescription>-<UID tail>``, so that channel patterns such as ``*T1post*`` match), stores
DICOM-SEG files back into their study, and tells whether a series already has a segmentation on the server (resume).

Which segmentation belongs to which series (the resume convention): a DICOM-SEG series of the study whose
``ReferencedSeriesSequence`` names the source series. Every DICOM-SEG written by
:func:`monai_unet.io.dicom_seg.write_dicom_seg` (highdicom) and by MONAI Label carries it; nothing depends on
series descriptions.

Credentials: a user name and a password (HTTP basic authentication). The password comes from the caller, from the
``MONAI_UNET_DICOMWEB_PASSWORD`` environment variable or from a prompt (:func:`read_password`); it is kept only in
the HTTP session and never written to logs or error messages. Credentials inside the URL are refused.

Failures: a server that does not answer, times out or answers 5xx/429 is asked again after ``backoff``,
``2 * backoff``, ... seconds (``retries`` times); then, and at once for other refusals (401, 403, 404), a
:class:`DicomWebError` names the server and the study. A batch catches that one type per study.

Needs ``dicomweb-client`` (``pip install "monai-unet[dicom]"``), imported only when a source is made.
"""

from __future__ import annotations

import dataclasses
import getpass
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

from monai_unet.io.dicom import NON_IMAGE_MODALITIES

__all__ = [
    "PASSWORD_ENV",
    "DicomWebError",
    "DicomWebSource",
    "SeriesRef",
    "StudyRef",
    "is_dicomweb_url",
    "parse_dicomweb_url",
    "parse_query",
    "read_password",
]

logger = logging.getLogger(__name__)

PASSWORD_ENV = "MONAI_UNET_DICOMWEB_PASSWORD"
"""The environment variable holding the DICOMweb password of ``--user``."""

SCHEME_PREFIX = "dicomweb+"
RETRIABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_SERIES_FIELDS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "PatientID",
    "StudyDate",
    "StudyDescription",
    "Modality",
    "SeriesDescription",
    "SeriesNumber",
    "NumberOfSeriesRelatedInstances",
)
_PARTIAL = ".partial-"
_QUERY_SAFE = "-._~*?,:@!$'()/"
"""Characters sent as they are in QIDO-RS values (besides letters and digits): all legal in a URL query."""
T = TypeVar("T")
_sleep = time.sleep  # the back-off's wait (tests record it)


class DicomWebError(RuntimeError):
    """A DICOMweb request that failed for good (after the retries): the message names the server and the study.

    Attributes:
        server: the server's DICOMweb root (no credentials).
        study_uid: the study concerned, when there is one.
        path: for a failed store, the local file(s) that stay where they are.
        status: the HTTP status of the last answer, ``None`` when the server did not answer.
    """

    def __init__(
        self,
        message: str,
        server: str,
        study_uid: str | None = None,
        path: Sequence[Path] = (),
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.server, self.study_uid, self.path, self.status = server, study_uid, tuple(path), status


@dataclasses.dataclass(frozen=True)
class SeriesRef:
    """One series on the server (from a QIDO-RS answer)."""

    study_uid: str
    series_uid: str
    modality: str = ""
    description: str = ""
    number: int | None = None
    instances: int | None = None

    @property
    def folder_name(self) -> str:
        """``<SeriesNumber>-<SeriesDescription>-<last 5 UID digits>``, as TCIA names exported series folders."""
        parts = [str(self.number) if self.number is not None else "", _safe(self.description), self.series_uid[-5:]]
        return "-".join(p for p in parts if p) or _safe(self.series_uid)


@dataclasses.dataclass(frozen=True)
class StudyRef:
    """One selected study: its identification and the selected image series, by series number."""

    study_uid: str
    patient_id: str = ""
    study_date: str = ""
    description: str = ""
    series: tuple[SeriesRef, ...] = ()

    @property
    def folder_name(self) -> str:
        """``<PatientID>_<StudyDate>_<last 8 UID digits>``: unique per study, readable in an output tree."""
        parts = [_safe(self.patient_id), _safe(self.study_date), self.study_uid[-8:]]
        return "_".join(p for p in parts if p)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")


def is_dicomweb_url(value: str | os.PathLike) -> bool:
    """Whether an input names a DICOMweb server (``dicomweb+http://`` or ``dicomweb+https://``)."""
    return str(value).lower().startswith((SCHEME_PREFIX + "http://", SCHEME_PREFIX + "https://"))


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def parse_dicomweb_url(url: str) -> str:
    """The ``http(s)://`` DICOMweb root of ``dicomweb+http(s)://HOST[:PORT]/PATH`` (or of a plain http(s) URL).

    Raises:
        ValueError: not an http(s) URL with a host, a query or fragment in it, or credentials in it (the message
            does not repeat them).
    """
    text = str(url).strip()
    if text.lower().startswith(SCHEME_PREFIX):
        text = text[len(SCHEME_PREFIX) :]
    parts = urlsplit(text)
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            f"the DICOMweb URL {_redacted(text)} holds credentials: give the user with --user NAME and the password "
            f"in the {PASSWORD_ENV} environment variable (URLs end up in logs and process lists)."
        )
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"{url!r} is not a DICOMweb URL: give dicomweb+http://HOST:PORT/PATH or dicomweb+https://HOST/PATH "
            "(e.g. dicomweb+http://127.0.0.1:8042/dicom-web for Orthanc)."
        )
    if parts.query or parts.fragment:
        raise ValueError(
            f"{url!r}: give the server's DICOMweb root without a query; select studies with --study, --series or "
            "--query KEY=VALUE."
        )
    return urlunsplit((parts.scheme.lower(), parts.netloc, parts.path.rstrip("/"), "", ""))


def _check_key(key: str) -> str:
    from pydicom.datadict import keyword_for_tag, tag_for_keyword

    if re.fullmatch(r"[0-9A-Fa-f]{8}", key):
        if not keyword_for_tag(int(key, 16)):
            raise ValueError(f"query key {key} is not a DICOM tag of the dictionary.")
        return key.upper()
    if tag_for_keyword(key) is None:
        raise ValueError(
            f"query key {key!r} is not a DICOM keyword: use keywords such as PatientID, StudyDate, AccessionNumber, "
            "Modality, SeriesDescription (case matters), or 8-digit tags such as 00100020."
        )
    return key


def parse_query(query: Mapping[str, object] | Iterable[str] | str | None) -> dict[str, str]:
    """QIDO-RS match keys from ``{"PatientID": "X"}``, ``["PatientID=X", "Modality=MR"]`` or ``"PatientID=X"``.

    Values may hold the wildcards ``*`` and ``?`` and date ranges (``StudyDate=19910101-19921231``).

    Raises:
        ValueError: a pair without ``=``, a key given twice, or a key that is not a DICOM keyword or tag.
    """
    if query is None:
        return {}
    if isinstance(query, Mapping):
        pairs = [(str(k), str(v)) for k, v in query.items()]
    else:
        items = [query] if isinstance(query, str) else list(query)
        pairs = []
        for item in items:
            key, sep, value = str(item).partition("=")
            if not sep or not key.strip():
                raise ValueError(f"query {item!r} is not of the form KEY=VALUE (e.g. PatientID=PGBM-001).")
            pairs.append((key.strip(), value.strip()))
    out: dict[str, str] = {}
    for key, value in pairs:
        key = _check_key(key)
        if key in out:
            raise ValueError(f"query key {key} given twice ({out[key]!r} and {value!r}).")
        out[key] = value
    return out


def read_password(user: str, password: str | None = None, env: str = PASSWORD_ENV, prompt: bool | None = None) -> str:
    """The password of ``user``: ``password`` when given, else ``$env``, else asked on the terminal (not echoed).

    Args:
        user: the user name (named in the prompt and the error).
        password: a password the caller already has.
        env: the environment variable to read.
        prompt: ask on the terminal when the variable is not set (default: when stdin is a terminal).

    Raises:
        ValueError: no password given, none in the environment and no terminal to ask on.
    """
    if password is not None:
        return password
    if os.environ.get(env):
        return os.environ[env]
    if prompt if prompt is not None else sys.stdin.isatty():
        return getpass.getpass(f"DICOMweb password for {user}: ")
    raise ValueError(f"no DICOMweb password for user {user!r}: set the {env} environment variable.")


def _require() -> Any:
    try:
        import dicomweb_client
    except ImportError as e:
        raise ImportError('DICOMweb needs dicomweb-client: pip install "monai-unet[dicom]".') from e
    return dicomweb_client


def _client_class(base: type | None = None) -> type:
    """``DICOMwebClient`` (or ``base``, a subclass of it) writing QIDO-RS queries with only the encoding a URL needs.

    dicomweb-client encodes ``*`` and ``-`` (``%2A``, ``%2D``); Orthanc 1.10's DICOMweb plugin (Debian 12) does not
    decode query values, so ``PatientID=PGBM%2D001`` or ``SeriesDescription=%2AT1post%2A`` match nothing. Letters,
    digits, ``-._~*?,:@!$'()/`` go as they are (all legal in a query); spaces and other characters are still
    encoded, so match them with ``?`` on such a server.
    """
    from dicomweb_client import DICOMwebClient

    class _Client(base or DICOMwebClient):
        def _http_get(self, url: str, params: dict | None = None, headers: dict | None = None, stream: bool = False):
            if params:
                url += "?" + "&".join(
                    f"{quote(str(k), safe='')}={quote(str(v), safe=_QUERY_SAFE)}"
                    for k, values in params.items()
                    for v in (values if isinstance(values, (list, tuple, set)) else [values])
                )
            return super()._http_get(url, None, headers, stream)

    return _Client


def _value(item: Mapping[str, Any], tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    value = values[0]
    if isinstance(value, Mapping):  # a person name in DICOM JSON
        value = value.get("Alphabetic", "")
    return str(value)


def _number(text: str) -> int | None:
    try:
        return int(float(text))
    except ValueError:
        return None


class DicomWebSource:
    """A DICOMweb server to select studies on, retrieve them from and store results to.

    Args:
        url: the server's DICOMweb root (``dicomweb+http://HOST:PORT/PATH``, or ``http(s)://...``).
        user: user name for HTTP basic authentication (``None``: no authentication).
        password: the password of ``user`` (see :meth:`from_url` to read it from the environment or a prompt).
        retries: how many times a request that found the server down, timed out or got 5xx/429 is sent again.
        backoff: seconds before the first retry; doubled before each further one.
        timeout: seconds a request may wait for the server to connect or to send data.
    """

    def __init__(
        self,
        url: str,
        user: str | None = None,
        password: str | None = None,
        retries: int = 3,
        backoff: float = 1.0,
        timeout: float = 60.0,
    ) -> None:
        if retries < 0 or backoff < 0 or timeout <= 0:
            raise ValueError(f"retries and backoff must be >= 0, timeout > 0; got {retries}, {backoff}, {timeout}.")
        _require()
        import requests

        self.url = parse_dicomweb_url(url)
        self.user, self.retries, self.backoff, self.timeout = user, retries, backoff, timeout

        class _Session(requests.Session):
            def request(self, *args: Any, **kwargs: Any) -> requests.Response:
                kwargs.setdefault("timeout", timeout)
                return super().request(*args, **kwargs)

        self.session = _Session()
        """The HTTP session: credentials, timeout."""
        if user is not None:
            self.session.auth = (user, password or "")
        self._client = self.make_client()
        self._client.set_http_retry_params(retry=False)  # retried here, with errors that name the study

    def make_client(self, base: type | None = None) -> Any:
        """A dicomweb-client client of this server and session, whose queries Orthanc 1.10 understands.

        Args:
            base: a ``DICOMwebClient`` subclass to build on (MONAI Label's ``DICOMwebClientX``); its own retries of
                429/503/504 answers are left on.
        """
        return _client_class(base)(url=self.url, session=self.session)

    @classmethod
    def from_url(cls, url: str, user: str | None = None, password: str | None = None, **kwargs: Any) -> DicomWebSource:
        """A source for ``url``; with ``user``, the password is ``password``, else ``$MONAI_UNET_DICOMWEB_PASSWORD``,
        else asked on the terminal. ``kwargs``: ``retries``, ``backoff``, ``timeout``."""
        if user is not None:
            password = read_password(user, password)
        return cls(url, user=user, password=password, **kwargs)

    def __repr__(self) -> str:
        return f"DicomWebSource({self.url!r}, user={self.user!r})"

    # -- requests with retries -----------------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], T], study: str | None = None, path: Sequence[Path] = ()) -> T:
        """``fn()``, retried with exponential back-off; failures become :class:`DicomWebError`."""
        import requests

        where = f" (study {study})" if study else ""
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except requests.HTTPError as e:
                status = e.response.status_code if e.response is not None else None
                why = f"HTTP {status} {getattr(e.response, 'reason', '') or ''}".strip()
                if status not in RETRIABLE_STATUS:
                    why += self._details(e.response)
                    raise DicomWebError(
                        self._refusal(what, where, status, why, path), self.url, study, path, status
                    ) from e
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as e:
                status, why = None, f"no answer ({type(e).__name__})"
            except requests.RequestException as e:  # an invalid URL, too many redirects: no use asking again
                raise DicomWebError(
                    f"DICOMweb server {self.url}: cannot {what}{where}: {type(e).__name__}{self._kept(path)}.",
                    self.url,
                    study,
                    path,
                ) from e
            if attempt < self.retries:
                delay = self.backoff * 2**attempt
                logger.warning(
                    f"DICOMweb server {self.url}: {why} to {what}{where}; retry {attempt + 1} of {self.retries} in "
                    f"{delay:g} s"
                )
                _sleep(delay)
        raise DicomWebError(
            f"DICOMweb server {self.url}: cannot {what}{where}: {why} after {self.retries + 1} tries"
            f"{self._kept(path)}.",
            self.url,
            study,
            path,
            status,
        )

    def _details(self, response: Any) -> str:
        """The first line of the server's explanation (Orthanc's ``Details``), without the password."""
        try:
            answer = response.json()
            text = answer.get("Details") or answer.get("Message") or "" if isinstance(answer, dict) else ""
        except Exception:  # no JSON explanation
            text = ""
        text = str(text).strip().splitlines()[0][:200] if str(text).strip() else ""
        auth = self.session.auth
        if text and isinstance(auth, tuple) and auth[1]:
            text = text.replace(auth[1], "***")
        return f": {text}" if text else ""

    def _kept(self, path: Sequence[Path]) -> str:
        return f"; the local file(s) stay at {', '.join(str(p) for p in path)}" if path else ""

    def _refusal(self, what: str, where: str, status: int | None, why: str, path: Sequence[Path]) -> str:
        hint = ""
        if status == 401:
            hint = (
                f" (user {self.user!r} and the password given were refused: check --user and ${PASSWORD_ENV})"
                if self.user
                else f" (the server needs credentials: give --user NAME and the password in ${PASSWORD_ENV})"
            )
        elif status == 403:
            hint = f" (user {self.user!r} may not do this on the server)"
        elif status == 404 and ":" not in why:  # no explanation from the server: the URL may be wrong
            hint = " (not found: is the URL the server's DICOMweb root, e.g. http://HOST:8042/dicom-web?)"
        return f"DICOMweb server {self.url}: cannot {what}{where}: {why}{hint}{self._kept(path)}."

    # -- QIDO-RS -------------------------------------------------------------------------------------------------

    def check(self) -> None:
        """Ask the server for one study (QIDO-RS): raises :class:`DicomWebError` when it is down or refuses us."""
        self._call("search for studies", lambda: self._client.search_for_studies(limit=1))

    def _search_series(self, study: str | None, filters: Mapping[str, str], what: str) -> list[dict]:
        return self._call(
            what,
            lambda: self._client.search_for_series(
                study_instance_uid=study, search_filters=dict(filters), fields=list(_SERIES_FIELDS), get_remaining=True
            ),
            study=study,
        )

    def select(
        self,
        study: str | None = None,
        series: str | None = None,
        query: Mapping[str, object] | Iterable[str] | str | None = None,
    ) -> list[StudyRef]:
        """The studies to segment, each with its selected image series (QIDO-RS at the series level).

        Args:
            study: a StudyInstanceUID: that study.
            series: a SeriesInstanceUID: that series alone.
            query: QIDO-RS match keys (see :func:`parse_query`), study or series attributes alike
                (``PatientID``, ``StudyDate``, ``AccessionNumber``, ``Modality``, ``SeriesDescription``...).

        Returns:
            The matching studies by PatientID, StudyDate and UID, their series by SeriesNumber; only image series
            (no DICOM-SEG, SR, RT objects: :data:`~monai_unet.io.dicom.NON_IMAGE_MODALITIES`). Empty when nothing
            matches.

        Raises:
            ValueError: nothing to select by (the whole PACS is never selected), or a bad query key.
            DicomWebError: the server failed.
        """
        filters = parse_query(query)
        if series:
            filters["SeriesInstanceUID"] = series
        if not (study or filters):
            raise ValueError("give a study UID, a series UID or a query (e.g. PatientID=...): not the whole PACS.")
        shown = ", ".join(f"{k}={v}" for k, v in filters.items()) or "all series"
        found = self._search_series(study, filters, f"search for series ({shown})")
        studies: dict[str, list[SeriesRef]] = {}
        info: dict[str, StudyRef] = {}
        for item in found:
            study_uid = _value(item, "0020000D") or (study or "")
            modality = _value(item, "00080060")
            if modality.upper() in NON_IMAGE_MODALITIES:
                continue
            ref = SeriesRef(
                study_uid,
                _value(item, "0020000E"),
                modality,
                _value(item, "0008103E"),
                _number(_value(item, "00200011")),
                _number(_value(item, "00201209")),
            )
            studies.setdefault(study_uid, []).append(ref)
            info.setdefault(
                study_uid,
                StudyRef(study_uid, _value(item, "00100020"), _value(item, "00080020"), _value(item, "00081030")),
            )
        if not found and any(quote(v, safe=_QUERY_SAFE) != v for v in filters.values()):
            logger.warning(
                f"nothing matches {shown} on {self.url}; some servers (Orthanc 1.10) do not decode encoded characters "
                "such as spaces or ^ in queries: put ? in their place"
            )
        refs = [
            dataclasses.replace(
                info[uid], series=tuple(sorted(s, key=lambda r: (r.number is None, r.number or 0, r.series_uid)))
            )
            for uid, s in studies.items()
        ]
        return sorted(refs, key=lambda r: (r.patient_id, r.study_date, r.study_uid))

    # -- WADO-RS -------------------------------------------------------------------------------------------------

    def retrieve(self, study: StudyRef, dest_dir: str | os.PathLike) -> Path:
        """Download the study's selected series into ``dest_dir/<study folder>/<series folder>/`` as DICOM files.

        Each series is written to a hidden ``.partial-<UID>`` folder and renamed into place when complete, so a
        series folder that exists is complete and is not downloaded again (an interrupted download starts over).

        Returns:
            The local study folder (``dest_dir / study.folder_name``), one folder per series (see
            :attr:`SeriesRef.folder_name`): what the local DICOM path segments.

        Raises:
            DicomWebError: the server failed on a series (the error names the study).
        """
        folder = Path(dest_dir) / study.folder_name
        folder.mkdir(parents=True, exist_ok=True)
        for series in study.series:
            target = folder / series.folder_name
            if target.is_dir():
                continue
            partial = folder / f"{_PARTIAL}{series.series_uid}"

            def download(series: SeriesRef = series, partial: Path = partial) -> int:
                shutil.rmtree(partial, ignore_errors=True)
                partial.mkdir()
                count = 0
                for ds in self._client.iter_series(series.study_uid, series.series_uid):
                    count += 1
                    ds.save_as(
                        str(partial / f"{count:05d}_{_safe(str(ds.SOPInstanceUID))}.dcm"), write_like_original=False
                    )
                return count

            name = f"series {series.series_uid}" + (f" ({series.description})" if series.description else "")
            n = self._call(f"retrieve {name}", download, study.study_uid)
            if n == 0:
                shutil.rmtree(partial, ignore_errors=True)
                raise DicomWebError(
                    f"DICOMweb server {self.url}: series {series.series_uid} of study {study.study_uid} has no "
                    "instances to retrieve.",
                    self.url,
                    study.study_uid,
                )
            partial.rename(target)
            logger.info(f"retrieved {n} instance(s) of series {series.description or series.series_uid} to {target}")
        return folder

    # -- STOW-RS -------------------------------------------------------------------------------------------------

    def store(self, files: Sequence[str | os.PathLike] | str | os.PathLike) -> None:
        """Store DICOM files (a DICOM-SEG) on the server (STOW-RS); each lands in the study its StudyInstanceUID names.

        Raises:
            DicomWebError: the server failed or rejected an instance; the message says where the files stay.
        """
        import pydicom

        paths = [Path(files)] if isinstance(files, (str, os.PathLike)) else [Path(f) for f in files]
        if not paths:
            return
        datasets = [pydicom.dcmread(str(p)) for p in paths]
        study = str(datasets[0].get("StudyInstanceUID", "")) or None
        what = f"store {', '.join(p.name for p in paths)}"
        answer = self._call(what, lambda: self._client.store_instances(datasets), study, paths)
        failed = [str(item.get("ReferencedSOPInstanceUID", "")) for item in answer.get("FailedSOPSequence", [])]
        if failed:
            raise DicomWebError(
                f"DICOMweb server {self.url}: cannot {what} (study {study}): the server rejected instance(s) "
                f"{', '.join(failed)}{self._kept(paths)}.",
                self.url,
                study,
                paths,
            )
        logger.info(f"stored {len(paths)} file(s) on {self.url} (study {study})")

    # -- resume ----------------------------------------------------------------------------------------------------

    def held_segmentations(self, study_uid: str) -> dict[str, tuple[str, ...]]:
        """The study's DICOM-SEG series by the source series they reference (``ReferencedSeriesSequence``).

        Returns:
            ``{source SeriesInstanceUID: (SEG SeriesInstanceUID, ...)}``; empty when the study holds no SEG.
        """
        segs = self._search_series(study_uid, {"Modality": "SEG"}, "search for DICOM-SEG series")
        held: dict[str, list[str]] = {}
        for item in segs:
            seg_uid = _value(item, "0020000E")
            meta = self._call(
                f"read the metadata of DICOM-SEG series {seg_uid}",
                lambda seg_uid=seg_uid: self._client.retrieve_series_metadata(study_uid, seg_uid),
                study_uid,
            )
            for instance in meta:
                for ref in instance.get("00081115", {}).get("Value", []):
                    source = _value(ref, "0020000E")
                    if source and seg_uid not in held.setdefault(source, []):
                        held[source].append(seg_uid)
        return {k: tuple(v) for k, v in held.items()}

    def holds_segmentation(self, study_uid: str, series_uid: str) -> bool:
        """Whether the server holds a DICOM-SEG of the study that references ``series_uid`` (see module docstring)."""
        return series_uid in self.held_segmentations(study_uid)
