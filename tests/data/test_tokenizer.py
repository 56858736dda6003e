import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scaling.data import tokenizer as tok


def test_constants():
    assert (tok.PAD, tok.BOS, tok.EOS, tok.VOCAB_SIZE) == (256, 257, 258, 259)
    assert tok.VOCAB_SIZE == tok.N_BYTES + len(tok.SPECIAL_IDS)


@settings(max_examples=10, deadline=None)
@given(st.binary(max_size=300))
def test_bytes_round_trip(data):
    ids = tok.encode(data)
    assert ids.dtype == np.int32 and ids.shape == (len(data),)
    assert ids.tolist() == list(data)  # one id per byte, equal to the byte value
    assert tok.decode_bytes(ids) == data


@settings(max_examples=10, deadline=None)
@given(st.text(max_size=100))
def test_text_round_trip(text):
    ids = tok.encode(text)
    assert ids.tolist() == list(text.encode("utf-8"))
    assert tok.decode(ids) == text


def test_bytes_like_inputs():
    for data in (b"ab\x00\xff", bytearray(b"ab\x00\xff"), memoryview(b"ab\x00\xff")):
        assert tok.encode(data).tolist() == [97, 98, 0, 255]


def test_bos_eos_and_wrap():
    ids = tok.encode("hi", add_bos=True, add_eos=True)
    assert ids.tolist() == [tok.BOS, 104, 105, tok.EOS]
    assert tok.encode("hi", add_bos=True).tolist() == [tok.BOS, 104, 105]
    assert tok.encode("hi", add_eos=True).tolist() == [104, 105, tok.EOS]
    assert tok.encode(b"", add_bos=True, add_eos=True).tolist() == [tok.BOS, tok.EOS]
    wrapped = tok.wrap_document(np.frombuffer(b"hi", np.uint8))
    assert wrapped.dtype == np.int32 and wrapped.tolist() == ids.tolist()


def test_decode_drops_specials_and_replaces_invalid_utf8():
    ids = [tok.BOS, *b"a\xffb", tok.PAD, tok.EOS]
    assert tok.decode_bytes(ids) == b"a\xffb"
    assert tok.decode(ids) == "a\ufffdb"
    assert tok.decode(np.array([], np.int32)) == ""
    assert tok.decode([tok.PAD, tok.PAD]) == ""


@pytest.mark.parametrize(
    "ids, match",
    [
        ([1, 259], "ids: contains 259; token ids must be in \\[0, 259\\)"),
        ([-1, 3], "ids: contains -1"),
        ([[1, 2]], "must be 1-D"),
        ([1.5], "integer dtype"),
    ],
)
def test_decode_rejects_bad_ids(ids, match):
    with pytest.raises(ValueError, match=match):
        tok.decode(ids)


def test_encode_rejects_non_text():
    with pytest.raises(TypeError, match="text: got int; must be str, bytes"):
        tok.encode(3)
