"""Checks that need the runners' registries, run by `sweep validate`, `plan` and `run` before any compute."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from space.schema import IMAGE_EXTENSIONS, Spec, SpecError, study_points, trial_settings


def check_spec(spec: Spec, source: str = "spec", files: bool = True) -> None:
    """Raise SpecError naming the study, the axis, the value and the fix for the first registry miss; with
    `files`, also every missing file the settings read (`sweep plan` plans without them)."""
    from sweep.stages import check_settings, ignored_axes

    if files:
        spec.check_assets(source)  # files the settings read exist (weights, reference batch, checkpoints)
    problems = check_settings(spec.baseline, spec.dataset)
    if problems:
        axis, message = problems[0]
        raise SpecError(f"baseline.{axis}: {message}", source)
    for index, study in enumerate(spec.studies):
        for point in study_points(spec, study):
            settings = trial_settings(spec, study, point)
            for axis, message in check_settings(settings, spec.dataset):
                where = "vary" if axis in study.vary else "fixed" if axis in study.fixed else None
                if where:
                    raise SpecError(f"studies[{index}] ({study.name}).{where}.{axis}: {message}", source)
                raise SpecError(f"studies[{index}] ({study.name}) at {point}: {message}", source)
            if study.search is not None and study.search.metric == "class_accuracy" and not spec.needs_classifier(settings):
                raise SpecError(
                    f"studies[{index}] ({study.name}).search.metric: class_accuracy needs the dataset classifier, but "
                    f"feature_extractor is {settings.feature_extractor} and class_accuracy is off; set "
                    f"class_accuracy: true at the top of the spec or search another metric (e.g. fid)", source)
            unread = sorted(ignored_axes("evaluation", settings) & set(study.search.axes if study.search else ()))
            if unread:
                raise SpecError(
                    f"studies[{index}] ({study.name}).search.axes.{unread[0]}: a {settings.modeling} generator does "
                    f"not read {unread[0]}, so every point would be the same evaluation; search axes it reads "
                    f"(e.g. cfg_scale) or drop {unread[0]}", source)


def describe_stage(stage: Any, tflops: float = 400.0) -> dict[str, Any]:
    from sweep.stages import describe

    return describe(stage, tflops)


def check_dataset(dataset: Any, source: str = "spec", deep: bool = False) -> None:
    """The spec's dataset can be read, checked by `sweep validate` and `sweep run` before any compute (not by
    `sweep plan`, which works without the data): SpecError naming the file or folder and the fix.

    imagefolder: the root exists and can be listed, it holds exactly `num_classes` class folders and none of them
    is without images or holds an empty (0-byte) image; one `os.scandir` pass, no image opened (seconds for
    ImageNet), the same listing the fingerprint of the keys comes from (sweep/fingerprint.py). fashion-mnist: its
    four IDX files exist. `deep` also opens every image (imagefolder) or reads the IDX files, and names the
    first that cannot be read."""
    from sweep.fingerprint import FASHION_MNIST_NAMES, dataset_root, listing_of

    if dataset.name in ("digits", "labels"):  # bundled, or no images at all (scoring imported models only)
        return
    root = dataset_root(dataset)
    if dataset.name == "fashion-mnist":
        listing = listing_of(dataset)
        missing = sorted(set(FASHION_MNIST_NAMES) - {path for path, _, _ in listing.files})
        if missing:
            raise SpecError(
                f"dataset.root: fashion-mnist reads its IDX files from {root!r}, but {', '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} missing there; install the Debian package "
                f"dataset-fashion-mnist (apt-get install -y dataset-fashion-mnist) or set dataset.root to the folder "
                f"holding {', '.join(FASHION_MNIST_NAMES)}", source)
        if deep:
            from runners.data import load_dataset

            try:
                load_dataset("fashion-mnist", dataset.image_size, root)
            except (ValueError, OSError, EOFError) as error:
                raise SpecError(f"dataset.root: {error}", source) from None
        return
    try:
        listing = listing_of(dataset)
    except FileNotFoundError:
        raise SpecError(f"dataset.root: {root!r} does not exist; set dataset.root to the folder laid out as "
                        f"root/<class>/<image files>", source) from None
    except NotADirectoryError:
        raise SpecError(f"dataset.root: {root!r} is a file, not a folder; set dataset.root to the folder laid out "
                        f"as root/<class>/<image files>", source) from None
    except PermissionError as error:
        raise SpecError(f"dataset.root: {error.filename or root!r} cannot be read (permission denied); give this "
                        f"user read and execute permission on the dataset folders (chmod -R a+rX)", source) from None
    except OSError as error:
        raise SpecError(f"dataset.root: {error.filename or root!r} cannot be listed ({error.strerror}); check the "
                        f"dataset folder and its mount", source) from None
    classes = listing.classes
    if len(classes) != dataset.num_classes:
        shown = ", ".join(c.name for c in classes[:5]) + (", ..." if len(classes) > 5 else "")
        raise SpecError(
            f"dataset.num_classes: {dataset.num_classes} classes, but {root!r} holds {len(classes)} class folders"
            f"{f' ({shown})' if classes else ''}; set dataset.num_classes: {len(classes)} or add the missing class "
            f"folders (root/<class>/<image files>)", source)
    for folder in classes:
        if folder.images == 0:
            raise SpecError(f"dataset.root: class folder {str(Path(root) / folder.name)!r} holds no images "
                            f"({', '.join(sorted(IMAGE_EXTENSIONS))}); add its images or remove the folder (and lower "
                            f"dataset.num_classes)", source)
        if folder.empty:
            raise SpecError(f"dataset.root: image file {str(Path(root) / folder.empty[0])!r} is empty (0 bytes); "
                            f"replace it with the image or delete it", source)
    if deep:
        first = first_unreadable(root, [path for path, _, _ in listing.files
                                        if Path(path).suffix.lower() in IMAGE_EXTENSIONS and "/" in path])
        if first is not None:
            path, reason = first
            raise SpecError(f"dataset.root: image file {path!r} cannot be read ({reason}); replace it with a good "
                            f"copy or delete it", source)


def first_unreadable(root: str, relative_paths: list[str]) -> tuple[str, str] | None:
    """(path, reason) of the first image of `relative_paths` (in order) that PIL cannot decode, or None."""
    from PIL import Image

    for relative in relative_paths:
        path = str(Path(root) / relative)
        try:
            with Image.open(path) as image:
                image.load()
        except Exception as error:  # noqa: BLE001 - any decoder failure means "unreadable"; it is reported, not hidden
            return path, f"{type(error).__name__}: {error}"
    return None
