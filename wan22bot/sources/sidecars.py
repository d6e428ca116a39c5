"""Files that travel with a watched photo, and moving them without ever overwriting anything.

Companions of `cat.jpg` (both spellings are accepted; the photo-name one wins when both exist):

- prompt:  `cat.jpg.txt` or `cat.txt`   (UTF-8 text; the whole file, trimmed, is the prompt)
- options: `cat.jpg.toml` or `cat.toml` (keys of JobOptions: frames, seed, interpolate, preset,
  prompt, negative_prompt, steps; the `.txt` prompt wins over a `prompt` key)

A stem companion (`cat.txt`) may belong to several photos (`cat.jpg`, `cat.png`); it moves with a
photo only when no other photo of that stem is left beside it.

Everything here is blocking file work: the folder source calls it from a thread.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tomllib
from pathlib import Path

from pydantic import ValidationError

from ..errors import InputError
from ..jobs import JobOptions
from ..validation import first_problem, show

# Names browsers, sync tools and copy programs give a file while it is still being written.
PARTIAL_SUFFIXES = (".part", ".partial", ".crdownload", ".download", ".tmp", ".temp", ".filepart", ".!qb", ".swp")
COMPANION_SUFFIXES = (".txt", ".toml")
ERROR_SUFFIX = ".error.txt"
MAX_COMPANION_BYTES = 64 * 1024
PROMPT_LIMIT = next((m.max_length for m in JobOptions.model_fields["prompt"].metadata
                     if getattr(m, "max_length", None)), 2000)
OPTION_KEYS = tuple(JobOptions.model_fields)


def ignored_reason(name: str, extensions: set[str]) -> str | None:
    """Why a top-level file name is not a photo to process (None: it is a candidate photo)."""
    low = name.lower()
    if name.startswith("."):
        return "a hidden file"
    if name.startswith("~$"):
        return "an office lock file"
    if low.endswith(PARTIAL_SUFFIXES) or low.endswith("~"):
        return "a partial download"
    if low.endswith(ERROR_SUFFIX) or low.endswith(COMPANION_SUFFIXES):
        return "a companion file"
    if Path(low).suffix not in extensions:
        return "not a photo extension"
    return None


def normalise_extensions(exts: list[str]) -> set[str]:
    out = set()
    for e in exts:
        e = e.strip().lower()
        if e:
            out.add(e if e.startswith(".") else "." + e)
    return out


# ---------------------------------------------------------------------------------- companions
def companion_names(photo_name: str) -> list[tuple[str, str]]:
    """(file name, form) of every possible companion, most specific first; form is 'name' or 'stem'."""
    stem = Path(photo_name).stem
    out = []
    for suf in COMPANION_SUFFIXES:
        out.append((photo_name + suf, "name"))
        if stem and stem != photo_name:
            out.append((stem + suf, "stem"))
    return out


def find_companions(photo: Path) -> dict[str, Path]:
    """The companions that exist: keys 'txt' and 'toml' (the most specific file of each kind)."""
    found: dict[str, Path] = {}
    for name, _form in companion_names(photo.name):
        kind = name.rsplit(".", 1)[1]
        if kind in found:
            continue
        p = photo.with_name(name)
        # A link or a FIFO counts as there (and is then refused when read): skipping it silently
        # would run the photo with another prompt than the one its owner meant.
        if _present(p):
            found[kind] = p
    return found


def movable_companions(photo: Path, extensions: set[str]) -> list[tuple[Path, str]]:
    """Companions to move along with `photo`: all `<photo>.*` ones, `<stem>.*` ones unless shared."""
    stem = Path(photo.name).stem
    shared = False
    try:
        for other in os.listdir(photo.parent):
            if other != photo.name and Path(other).stem == stem and Path(other.lower()).suffix in extensions:
                shared = True
                break
    except OSError:
        shared = True
    out = []
    for name, form in companion_names(photo.name):
        if form == "stem" and shared:
            continue
        p = photo.with_name(name)
        if _present(p):  # a link moves as a link; its target is never touched
            out.append((p, form))
    return out


def _present(p: Path) -> bool:
    """Something other than a folder is at `p` (links are not followed)."""
    try:
        return not stat.S_ISDIR(os.lstat(p).st_mode)
    except OSError:
        return False


def companion_signature(photo: Path) -> tuple:
    """(size, mtime) of each companion that exists, so a photo waits until its companions settle too."""
    sig = []
    for name, _form in companion_names(photo.name):
        try:
            st = os.lstat(photo.with_name(name))
        except OSError:
            continue
        sig.append((name, st.st_size, st.st_mtime_ns))
    return tuple(sig)


def _read_text(p: Path) -> str:
    """A companion's text. Only a regular file of the folder itself is read: a link could point at
    any file the daemon may read (/etc/hostname, a key) and put it in the job, the API and the page."""
    try:
        # O_NOFOLLOW refuses a link at open time (no check-then-open race); O_NONBLOCK keeps a FIFO
        # from hanging the open, and fstat then refuses it as not a regular file.
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(f"{p.name} is a symbolic link; a prompt or options file must be a regular file "
                             "in the watched folder, so replace the link with a copy") from None
        raise InputError(f"{p.name} cannot be read ({exc.strerror or exc})") from None
    try:
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise InputError(f"{p.name} is not a regular file; a prompt or options file must be an "
                                 "ordinary text file")
            if st.st_size > MAX_COMPANION_BYTES:
                raise InputError(f"{p.name} is {st.st_size // 1024} KiB; a prompt or options file may be at most "
                                 f"{MAX_COMPANION_BYTES // 1024} KiB")
            raw = f.read(MAX_COMPANION_BYTES + 1)
    except OSError as exc:
        raise InputError(f"{p.name} cannot be read ({exc.strerror or exc})") from None
    if len(raw) > MAX_COMPANION_BYTES:  # it grew after the fstat
        raise InputError(f"{p.name} is larger than {MAX_COMPANION_BYTES // 1024} KiB, the limit for a prompt or "
                         "options file")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{p.name} is not UTF-8 text") from None


def read_options(photo: Path) -> JobOptions:
    """Per-photo options from the companions; InputError (one sentence naming the key) when invalid."""
    found = find_companions(photo)
    data: dict = {}
    toml_path = found.get("toml")
    if toml_path is not None:
        try:
            data = tomllib.loads(_read_text(toml_path))
        except tomllib.TOMLDecodeError as exc:
            raise InputError(f"{toml_path.name} is not valid TOML ({exc})") from None
        for key, value in data.items():
            if key not in OPTION_KEYS:
                raise InputError(f"{toml_path.name} has an unknown key '{key}'; the keys it may set are "
                                 f"{', '.join(OPTION_KEYS)}")
            if isinstance(value, dict):
                raise InputError(f"{toml_path.name} sets '{key}' to a table; it must be a single value")
    txt = found.get("txt")
    if txt is not None:
        prompt = _read_text(txt).strip()
        if len(prompt) > PROMPT_LIMIT:
            raise InputError(f"{txt.name} holds a prompt of {len(prompt)} characters; the limit is {PROMPT_LIMIT}")
        if prompt:
            data["prompt"] = prompt
    try:
        return JobOptions.model_validate(data)
    except ValidationError as exc:
        problem = first_problem(exc)
        key = problem.key or "options"
        where = toml_path.name if toml_path is not None else (txt.name if txt else photo.name)
        if key == "prompt" and txt is not None and "prompt" in data and toml_path is None:
            where = txt.name
        raise InputError(f"{where} sets {key} = {show(problem.given, 60)}, which is not allowed: "
                         f"{problem.message}") from None


# ---------------------------------------------------------------------------------- messages
def one_line(text: str) -> str:
    return " ".join(str(text).split())


def sentence(text: str) -> str:
    """One line ending with a full stop (messages often start with a file name, so no capitalising)."""
    s = one_line(text)
    if not s:
        return "The photo could not be processed."
    return s if s.endswith((".", "!", "?")) else s + "."


# ---------------------------------------------------------------------------------- moving
def place(src: Path, dst: Path) -> None:
    """Move `src` to `dst`; FileExistsError if `dst` exists: nothing is ever overwritten.

    A hard link makes the no-overwrite check atomic; across file systems (or where links are not
    supported) the bytes are copied into a file created exclusively, then the source is removed.
    """
    try:
        os.link(src, dst, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK, errno.EACCES, errno.ENOSYS):
            raise
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
        else:
            try:
                with open(src, "rb") as fin, open(dst, "xb") as fout:
                    shutil.copyfileobj(fin, fout, 1 << 20)
                    fout.flush()
                    os.fsync(fout.fileno())
                shutil.copystat(src, dst)
            except FileExistsError:
                raise
            except BaseException:
                dst.unlink(missing_ok=True)
                raise
    os.unlink(src)


def _numbered(name: str, n: int) -> str:
    if n == 1:
        return name
    p = Path(name)
    return f"{p.stem}-{n}{p.suffix}" if p.stem else f"{name}-{n}"


def _targets(photo_name: str, companions: list[tuple[Path, str]], n: int,
             with_error: bool) -> tuple[str, list[str]]:
    new_photo = _numbered(photo_name, n)
    new_stem = Path(new_photo).stem
    names = [new_photo]
    for comp, form in companions:
        suf = comp.name.rsplit(".", 1)[1]
        names.append(f"{new_photo}.{suf}" if form == "name" else f"{new_stem}.{suf}")
    if with_error:
        names.append(new_photo + ERROR_SUFFIX)
    return new_photo, names


def move_group(photo: Path, dest_dir: Path, extensions: set[str], error: str | None = None) -> Path:
    """Move a photo and its companions into `dest_dir` under free names (`cat-2.jpg` on collision).

    With `error`, also writes `<photo name>.error.txt` beside the moved photo. Returns the new path.
    """
    return move_group_noted(photo, dest_dir, extensions, error)[0]


def move_group_noted(photo: Path, dest_dir: Path, extensions: set[str],
                     error: str | None = None) -> tuple[Path, Path | None]:
    """move_group, also returning where the error note was written (None without `error`)."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    companions = movable_companions(photo, extensions)
    for n in range(1, 10000):
        new_photo, names = _targets(photo.name, companions, n, error is not None)
        if any(os.path.lexists(dest_dir / nm) for nm in names):
            continue
        try:
            place(photo, dest_dir / new_photo)
        except FileExistsError:
            continue  # taken a moment ago: try the next number
        break
    else:
        raise OSError(errno.EEXIST, f"no free name for {photo.name} in {dest_dir}")
    moved = dest_dir / new_photo
    for (comp, _form), nm in zip(companions, names[1:]):
        target = dest_dir / nm
        for m in range(2, 10000):
            try:
                place(comp, target)
                break
            except FileExistsError:
                target = dest_dir / f"{nm}-{m}"
            except FileNotFoundError:
                break
    err_path = None
    if error is not None:
        err_path = dest_dir / (new_photo + ERROR_SUFFIX)
        for m in range(2, 10000):
            try:
                with open(err_path, "x", encoding="utf-8") as f:
                    f.write(sentence(error) + "\n")
                break
            except FileExistsError:
                err_path = dest_dir / f"{new_photo}-{m}{ERROR_SUFFIX}"
    return moved, err_path
