"""The order-independent content digest and the file md5 of torchbop.data.verify."""

import hashlib
import random

import pytest

from torchbop.data.verify import file_md5, image_set_digest

SIZE = 5  # bytes per image in these tests


def images(n: int, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    return [bytes(rng.randrange(256) for _ in range(SIZE)) for _ in range(n)]


def digest(pairs, batch_sizes=None) -> str:
    """image_set_digest of ``(image, label)`` pairs, cut into batches of the given sizes (one batch by default)."""
    batch_sizes = batch_sizes or [len(pairs)]
    batches, start = [], 0
    for size in batch_sizes:
        part = pairs[start : start + size]
        batches.append((b"".join(p for p, _ in part), [label for _, label in part]))
        start += size
    return image_set_digest(batches, SIZE)


def test_matches_the_definition():
    """sha256 of the sorted (sha1(pixels) + label byte) keys, written out independently."""
    pairs = list(zip(images(7), [3, 1, 4, 1, 5, 9, 2]))
    keys = sorted(hashlib.sha1(p).digest() + bytes([label]) for p, label in pairs)
    assert digest(pairs) == hashlib.sha256(b"".join(keys)).hexdigest()
    assert image_set_digest([], SIZE) == hashlib.sha256(b"").hexdigest()


def test_order_and_batching_do_not_matter():
    pairs = list(zip(images(12), [i % 10 for i in range(12)]))
    reference = digest(pairs)
    rng = random.Random(1)
    for _ in range(5):
        shuffled = pairs[:]
        rng.shuffle(shuffled)
        assert digest(shuffled, [5, 0, 4, 3]) == reference


def test_every_single_byte_change_is_detected():
    pairs = list(zip(images(3), [0, 1, 2]))
    reference = digest(pairs)
    for i, (pixels, label) in enumerate(pairs):
        for position in range(SIZE):
            for delta in (1, 128, 255):
                changed = bytearray(pixels)
                changed[position] = (changed[position] + delta) % 256
                assert digest(pairs[:i] + [(bytes(changed), label)] + pairs[i + 1 :]) != reference


def test_labels_are_bound_to_their_images():
    a, b = images(2)
    reference = digest([(a, 0), (b, 1)])
    assert digest([(a, 0), (b, 2)]) != reference  # a label changed
    assert digest([(a, 1), (b, 0)]) != reference  # the same labels, swapped between the images


def test_duplicates_count():
    a, b = images(2)
    assert digest([(a, 0), (a, 0), (b, 1)]) != digest([(a, 0), (b, 1), (b, 1)])
    assert digest([(a, 0), (b, 1)]) != digest([(a, 0), (b, 1), (b, 1)])


def test_byte_count_must_match_labels():
    with pytest.raises(ValueError, match="9 pixel bytes for 2 images of 5 bytes"):
        image_set_digest([(bytes(9), [0, 1])], SIZE)


def test_file_md5_over_several_chunks(tmp_path):
    data = bytes(range(256)) * 9000  # over 2 MiB: more than one 1 MiB chunk
    path = tmp_path / "f"
    path.write_bytes(data)
    assert file_md5(path) == hashlib.md5(data).hexdigest()
