"""Verify a local copy of a paper dataset (`kebench data check NAME --data-root PATH`).

It reads the annotation files with the same listers the loader uses, then checks that every
listed image exists and decodes (at a reduced JPEG scale: the whole compressed stream is still
read, so truncated files are caught), and compares split sizes and classes with the official
ones (a subset copy is a warning: which classes, by id where the dataset has ids, and how many images).
Exit code 0: usable; 1: missing or unreadable images, or classes without images (and, with
--strict, split sizes or classes that differ from the official copy); 2: the layout itself is wrong.
"""
from __future__ import annotations

CHECK_SIZE = 64  # decode probe: shorter side in pixels (draft scale), enough to read every byte


def _probe(path) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.draft("RGB", (CHECK_SIZE, CHECK_SIZE))
            im.convert("RGB")
        return None
    except FileNotFoundError:
        return "missing"
    except Exception as exc:  # every way PIL can fail on a broken file is reported by path
        return f"unreadable ({type(exc).__name__}: {exc})"


def check(name: str, data_root, per_class: bool, strict: bool, workers: int, out) -> int:
    """Verify a local copy: images per split and class, missing and unreadable files, printed on
    `out` (a rich Console). Returns the exit code: 0 usable, 1 problems found."""
    from collections import Counter
    from concurrent.futures import ThreadPoolExecutor

    from rich.table import Table

    from kebench.data import arrays, cache, names, paper

    names()  # every dataset module registered
    if name in arrays.ARRAYS:
        return check_arrays(name, data_root, per_class, strict, out)
    ds = paper.get(name)
    root = paper.data_root(data_root, ds)
    listing = paper.list_dataset(name, root)
    out.print(f"{ds.title} ('{name}', {ds.task}) at {listing.base}"
              + (f", {listing.layout} layout" if listing.layout else "") + f": {len(listing.classes)} classes")
    paths = [(split, rel) for split, items in listing.splits.items() for rel, _ in items]
    with ThreadPoolExecutor(max_workers=workers or cache.default_workers()) as pool:
        errors = list(pool.map(lambda p: _probe(listing.base / p[1]), paths))
    bad = [(split, rel, err) for (split, rel), err in zip(paths, errors) if err is not None]
    bad_set = {(s, r) for s, r, _ in bad}

    def classes_in(split: str) -> range:  # 0-based labels a split should cover
        if ds.task != "retrieval":
            return range(len(listing.classes))
        half = listing.half()
        return range(half) if split == "train" else range(len(listing.classes) - half)
    table = Table("split", "images", "official", "classes", "min/class", "max/class", "missing", "unreadable")
    problems = []
    counts = {}
    for split, items in listing.splits.items():
        per = Counter(y for _, y in items)
        readable = Counter(y for rel, y in items if (split, rel) not in bad_set)
        counts[split] = per
        missing = sum(1 for s, r, e in bad if s == split and e == "missing")
        unreadable = sum(1 for s, r, e in bad if s == split and e != "missing")
        official = ds.official.get(split)
        table.add_row(split, str(len(items)), str(official) if official is not None else "–",
                      f"{len(per)}/{len(classes_in(split))}", str(min(per.values(), default=0)), str(max(per.values(), default=0)),
                      str(missing), str(unreadable))
        empty = [c for c in classes_in(split) if readable[c] == 0]
        if empty:
            problems.append(f"{split}: {len(empty)} class(es) have no readable image, so the dataset cannot "
                            f"be trained or evaluated: {', '.join(_class_name(listing, ds, split, c) for c in empty[:5])}"
                            + (", ..." if len(empty) > 5 else ""))
        _compare(split, len(items), official, strict, problems, out)
    _compare_classes(ds, listing, strict, problems, out)
    out.print(table)
    if per_class:
        pt = Table("class", *listing.splits)
        for g, cname in enumerate(listing.classes):
            pt.add_row(cname, *[str(counts[s][g - _offset(listing, ds, s)]) if g - _offset(listing, ds, s) in classes_in(s)
                                else "–" for s in listing.splits])
        out.print(pt)
    for split, rel, err in bad[:50]:
        out.print(f"[red]{err}[/red]: {listing.base / rel} ({split})", highlight=False)
    if len(bad) > 50:
        out.print(f"... and {len(bad) - 50} more")
    if bad:
        problems.append(f"{len(bad)} listed images are missing or unreadable")
    for p in problems:
        out.print(f"[red]problem:[/red] {p}", highlight=False)
    if problems:
        out.print(f"'{name}' at {listing.base}: {len(problems)} problem(s). Training skips up to "
                  f"--data-opt max_bad={paper.COMMON_OPTIONS['max_bad']} unusable images (with a warning).")
        return 1
    usable = len(paths) - len(bad_set)
    out.print(f"[green]ok[/green]: {usable} images in {len(listing.splits)} splits, all readable.")
    return 0


def _compare(split: str, count: int, official, strict: bool, problems: list, out) -> None:
    """A split size that differs from the official copy."""
    if official is not None and official != count:
        _differs(f"{split}: {count} images listed, the official copy has {official}", strict, problems, out)


def _differs(msg: str, strict: bool, problems: list, out) -> None:
    """A copy that differs from the official one: a problem with --strict, else a warning (a subset
    or quick-test copy trains, but its numbers are not the paper's)."""
    if strict:
        problems.append(msg)
    else:
        out.print(f"[yellow]warning:[/yellow] {msg} (a subset: it trains, but its numbers are not the paper's)",
                  highlight=False)


def _compare_classes(ds, listing, strict: bool, problems: list, out) -> None:
    """Classes that differ from the official copy, named by id where the dataset has ids (a Cars copy
    with ids 3, 7 and 150); retrieval variants per side of the class-disjoint split."""
    from kebench.data.paper import id_ranges

    official = ds.official_classes
    if official is None:
        return

    def which(labels: range) -> str:
        if listing.class_ids is not None:
            return "class ids " + id_ranges([listing.class_ids[y] for y in labels])
        shown = [listing.classes[y] for y in labels[:5]]
        return ", ".join(shown) + (", ..." if len(labels) > 5 else "")
    total = len(listing.classes)
    if ds.task != "retrieval" or ds.last_train_id is None:
        if total != official:
            _differs(f"{total} classes ({which(range(total))}), the official copy has {official}", strict, problems, out)
        return
    last, half = ds.last_train_id, listing.half()
    for split, labels, want, ids in (("train", range(half), last, f"1-{last}"),
                                     ("test", range(half, total), official - last, f"{last + 1}-{official}")):
        if len(labels) != want:
            _differs(f"{split}: {len(labels)} classes ({which(labels)}), the official split has {want} "
                     f"(class ids {ids})", strict, problems, out)


def check_arrays(name: str, data_root, per_class: bool, strict: bool, out) -> int:
    """CIFAR / MNIST: the arrays are read whole (a damaged file is a layout error, exit 2); then
    counts per split and class against the official copy."""
    from collections import Counter

    from rich.table import Table

    from kebench.data import arrays, paper

    ds = arrays.ARRAYS[name]
    data = arrays.read(name, paper.data_root(data_root, ds))
    out.print(f"{ds.title} ('{name}', classification) at {data.base}, {data.layout or 'official'} layout: "
              f"{len(data.classes)} classes", highlight=False)
    table = Table("split", "images", "official", "classes", "min/class", "max/class", "size")
    problems, counts = [], {}
    for split, (x, y) in data.splits.items():
        per = Counter(y.tolist())
        counts[split] = per
        table.add_row(split, str(len(y)), str(ds.official.get(split, "–")), f"{len(per)}/{len(data.classes)}",
                      str(min(per.values(), default=0)), str(max(per.values(), default=0)),
                      "x".join(map(str, x.shape[1:])))
        empty = [data.classes[c] for c in range(len(data.classes)) if per[c] == 0]
        if empty:
            problems.append(f"{split}: {len(empty)} class(es) have no image, so the dataset cannot be trained or "
                            f"evaluated: {', '.join(empty[:5])}" + (", ..." if len(empty) > 5 else ""))
        _compare(split, len(y), ds.official.get(split), strict, problems, out)
    out.print(table)
    if per_class:
        pt = Table("class", *data.splits)
        for c, cname in enumerate(data.classes):
            pt.add_row(cname, *[str(counts[s][c]) for s in data.splits])
        out.print(pt)
    for p in problems:
        out.print(f"[red]problem:[/red] {p}", highlight=False)
    if problems:
        return 1
    out.print(f"[green]ok[/green]: {sum(len(y) for _, y in data.splits.values())} images in "
              f"{len(data.splits)} splits, all readable.")
    return 0


def _offset(listing, ds, split: str) -> int:
    """Retrieval test labels are re-based: label 0 of the test split is class half+1."""
    return listing.half() if ds.task == "retrieval" and split == "test" else 0


def _class_name(listing, ds, split: str, label: int) -> str:
    return listing.classes[label + _offset(listing, ds, split)]
