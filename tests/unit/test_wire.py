"""The hand-encoded Txn must be exactly what the generated protobuf classes say."""

from etcd3 import etcdrpc
from etcd3.etcdrpc import kv_pb2

from services.core.kv import Delete, Put, Unchanged
from services.core.wire import decode_txn_response, encode_txn


def test_the_encoded_txn_parses_back_into_the_same_request():
    guards = [Unchanged("/a/b", 0), Unchanged("/a/ü", 123456789012)]
    ops = [Put("/a/b", b"v" * 300), Put("/a/c", b"", lease=7587868), Delete("/a/d")]
    parsed = etcdrpc.TxnRequest.FromString(encode_txn(guards, ops))
    assert [(c.key, c.target, c.result, c.mod_revision) for c in parsed.compare] == [
        (b"/a/b", etcdrpc.Compare.MOD, etcdrpc.Compare.EQUAL, 0),
        ("/a/ü".encode(), etcdrpc.Compare.MOD, etcdrpc.Compare.EQUAL, 123456789012),
    ]
    put0, put1, delete = parsed.success
    assert (put0.request_put.key, put0.request_put.value) == (b"/a/b", b"v" * 300)
    assert (put1.request_put.key, put1.request_put.lease) == (b"/a/c", 7587868)
    assert delete.request_delete_range.key == b"/a/d"
    assert not delete.request_delete_range.range_end


def test_the_response_decoder_reads_success_and_revision_and_skips_the_rest():
    resp = etcdrpc.TxnResponse(
        header=etcdrpc.ResponseHeader(cluster_id=1, member_id=2, revision=98765, raft_term=4),
        succeeded=True,
        responses=[etcdrpc.ResponseOp(response_put=etcdrpc.PutResponse(
            header=etcdrpc.ResponseHeader(revision=5)))],
    )
    assert decode_txn_response(resp.SerializeToString()) == (True, 98765)
    failed = etcdrpc.TxnResponse(header=etcdrpc.ResponseHeader(revision=3))
    assert decode_txn_response(failed.SerializeToString()) == (False, 3)


def test_the_range_decoder_reads_keys_values_revisions_and_more():
    from services.core.kv import KeyValue
    from services.core.wire import decode_range_response

    resp = etcdrpc.RangeResponse(
        header=etcdrpc.ResponseHeader(revision=77),
        kvs=[
            kv_pb2.KeyValue(key=b"/a", value=b"1", create_revision=3, mod_revision=9,
                             version=2, lease=0),
            kv_pb2.KeyValue(key="/ü".encode(), value=b"", create_revision=4, mod_revision=4,
                             lease=123456789),
        ],
        more=True,
        count=5,
    )
    kvs, more, revision = decode_range_response(resp.SerializeToString())
    assert kvs == [KeyValue("/a", b"1", 9, 3, 0), KeyValue("/ü", b"", 4, 4, 123456789)]
    assert (more, revision) == (True, 77)


def test_the_keepalive_codec_matches_the_generated_classes_with_negative_ttls():
    from services.core.wire import decode_keepalive, encode_keepalive

    assert etcdrpc.LeaseKeepAliveRequest.FromString(encode_keepalive(7587868)).ID == 7587868
    for lease_id, ttl in [(123456789012345, 30), (5, 0), (6, -1)]:
        resp = etcdrpc.LeaseKeepAliveResponse(
            header=etcdrpc.ResponseHeader(revision=9), ID=lease_id, TTL=ttl)
        assert decode_keepalive(resp.SerializeToString()) == (lease_id, ttl)


def test_the_encoded_range_request_is_what_the_generated_class_encodes():
    from services.core.wire import encode_range

    for kwargs in ({}, {"limit": 2000}, {"revision": 123456789, "keys_only": True},
                   {"count_only": True, "revision": 5},
                   {"min_mod_revision": 300, "keys_only": True}):
        expected = etcdrpc.RangeRequest(key=b"/chora/", range_end=b"/chora0", **kwargs)
        assert encode_range(b"/chora/", b"/chora0", **kwargs) == expected.SerializeToString()
    assert encode_range(b"/a") == etcdrpc.RangeRequest(key=b"/a").SerializeToString()


def test_the_range_decoder_reads_long_values_and_large_revisions():
    from services.core.kv import KeyValue
    from services.core.wire import decode_range_response

    long_key = "/k/" + "x" * 200
    resp = etcdrpc.RangeResponse(
        header=etcdrpc.ResponseHeader(revision=2**40),
        kvs=[kv_pb2.KeyValue(key=long_key.encode(), value=b"v" * 70_000,
                             create_revision=2**33, mod_revision=2**35, version=300)],
    )
    kvs, more, revision = decode_range_response(resp.SerializeToString())
    assert kvs == [KeyValue(long_key, b"v" * 70_000, 2**35, 2**33, 0)]
    assert (more, revision) == (False, 2**40)


def test_a_count_only_answer_gives_the_count_and_the_revision():
    from services.core.wire import decode_range_count

    resp = etcdrpc.RangeResponse(header=etcdrpc.ResponseHeader(revision=912), count=50_000)
    assert decode_range_count(resp.SerializeToString()) == (50_000, 912)
    assert decode_range_count(etcdrpc.RangeResponse().SerializeToString()) == (0, 0)
