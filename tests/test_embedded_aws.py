"""embedded_aws.install(): moto at the cost of what a request touches, answering exactly
as moto itself does (the conftest installs it for every test)."""

import threading

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.core.serialize import BaseJSONSerializer
from moto.dynamodb.models.table import Table

from devstack import embedded_aws

KEY = [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}]


@pytest.fixture
def ddb(aws_env):
    embedded_aws.install()
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(
            TableName="t",
            KeySchema=KEY,
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[
                {"AttributeName": name, "AttributeType": kind} for name, kind in (("pk", "S"), ("sk", "S"), ("at", "N"))
            ],
            LocalSecondaryIndexes=[
                {
                    "IndexName": "by_at",
                    "Projection": {"ProjectionType": "ALL"},
                    "KeySchema": [KEY[0], {"AttributeName": "at", "KeyType": "RANGE"}],
                }
            ],
        )
        for owner in ("a", "b"):
            for index in range(40):
                item = {
                    "pk": {"S": owner},
                    "sk": {"S": f"{'nb' if index % 3 else 'name'}#{index:03d}"},
                    "v": {
                        "M": {
                            "n": {"N": str(index)},
                            "l": {"L": [{"S": "x"}, {"BOOL": True}, {"NULL": True}]},
                            "ss": {"SS": ["p", "q"]},
                        }
                    },
                }
                if index % 4:
                    item["at"] = {"N": str((index * 7) % 40)}  # sparse in the index, out of sk order
                if index == 5:
                    item["bin"] = {"B": b"\x00\xffbinary"}
                client.put_item(TableName="t", Item=item)
        yield client


def everything(client) -> list:
    return sorted(client.scan(TableName="t", ConsistentRead=True)["Items"], key=lambda i: (i["pk"]["S"], i["sk"]["S"]))


def test_a_failed_transaction_changes_nothing_and_a_good_one_changes_only_what_it_names(ddb):
    before = everything(ddb)
    actions = [
        {"Put": {"TableName": "t", "Item": {"pk": {"S": "a"}, "sk": {"S": "new#1"}}}},
        {
            "Update": {
                "TableName": "t",
                "Key": {"pk": {"S": "a"}, "sk": {"S": "nb#001"}},
                "UpdateExpression": "SET w = :w",
                "ExpressionAttributeValues": {":w": {"S": "changed"}},
            }
        },
        {"Delete": {"TableName": "t", "Key": {"pk": {"S": "b"}, "sk": {"S": "nb#002"}}}},
        {
            "Update": {
                "TableName": "t",
                "Key": {"pk": {"S": "a"}, "sk": {"S": "nb#004"}},
                "UpdateExpression": "SET v.n = :n",
                "ExpressionAttributeValues": {":n": {"N": "99"}},
            }
        },
    ]
    failing = {
        "ConditionCheck": {
            "TableName": "t",
            "Key": {"pk": {"S": "b"}, "sk": {"S": "nb#007"}},
            "ConditionExpression": "attribute_not_exists(pk)",
        }
    }
    for last in (failing, {"Put": {"TableName": "t", "Item": {"pk": {"S": "a"}, "sk": {"S": "nb#001"}}}}):
        with pytest.raises(ClientError):  # a condition fails / two actions on one item
            ddb.transact_write_items(TransactItems=actions + [last])
        assert everything(ddb) == before
    ddb.transact_write_items(TransactItems=actions)
    after = {(i["pk"]["S"], i["sk"]["S"]): i for i in everything(ddb)}
    expected = {(i["pk"]["S"], i["sk"]["S"]): i for i in before}
    expected[("a", "new#1")] = {"pk": {"S": "a"}, "sk": {"S": "new#1"}}
    expected[("a", "nb#001")] = {**expected[("a", "nb#001")], "w": {"S": "changed"}}
    del expected[("b", "nb#002")]
    nested = expected[("a", "nb#004")]["v"]["M"]
    expected[("a", "nb#004")] = {**expected[("a", "nb#004")], "v": {"M": {**nested, "n": {"N": "99"}}}}
    assert after == expected


def test_concurrent_transactions_on_one_item_lose_no_update(ddb):
    def add():
        for _ in range(10):
            ddb.transact_write_items(
                TransactItems=[
                    {
                        "Update": {
                            "TableName": "t",
                            "Key": {"pk": {"S": "a"}, "sk": {"S": "#counts"}},
                            "UpdateExpression": "ADD n :one",
                            "ExpressionAttributeValues": {":one": {"N": "1"}},
                        }
                    }
                ]
            )

    threads = [threading.Thread(target=add) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counts = ddb.get_item(TableName="t", Key={"pk": {"S": "a"}, "sk": {"S": "#counts"}}, ConsistentRead=True)
    assert counts["Item"]["n"] == {"N": "80"}


QUERIES = [
    {"KeyConditionExpression": "pk = :p", "ExpressionAttributeValues": {":p": {"S": "a"}}},
    {"KeyConditionExpression": "pk = :p", "ExpressionAttributeValues": {":p": {"S": "a"}}, "Limit": 7},
    {
        "KeyConditionExpression": "pk = :p AND begins_with(sk, :s)",
        "ScanIndexForward": False,
        "Limit": 5,
        "ExpressionAttributeValues": {":p": {"S": "b"}, ":s": {"S": "nb#"}},
    },
    {
        "KeyConditionExpression": "pk = :p AND sk BETWEEN :x AND :y",
        "FilterExpression": "attribute_exists(#at)",
        "ExpressionAttributeNames": {"#at": "at"},
        "Limit": 4,
        "ExpressionAttributeValues": {":p": {"S": "a"}, ":x": {"S": "name#010"}, ":y": {"S": "nb#030"}},
    },
    {
        "KeyConditionExpression": "pk = :p AND sk > :s",
        "ExpressionAttributeValues": {":p": {"S": "a"}, ":s": {"S": "nb#"}},
        "ProjectionExpression": "sk, v.l",
    },
    {
        "IndexName": "by_at",
        "KeyConditionExpression": "pk = :p",
        "ExpressionAttributeValues": {":p": {"S": "a"}},
        "Limit": 6,
    },
    {
        "IndexName": "by_at",
        "KeyConditionExpression": "pk = :p AND #at >= :n",
        "ScanIndexForward": False,
        "ExpressionAttributeNames": {"#at": "at"},
        "ExpressionAttributeValues": {":p": {"S": "b"}, ":n": {"N": "9"}},
        "Limit": 5,
    },
    {"KeyConditionExpression": "pk = :p", "ExpressionAttributeValues": {":p": {"S": "nobody"}}},
]


def all_pages(client, query) -> list:
    pages, start = [], None
    while True:
        page = client.query(TableName="t", **query, **({"ExclusiveStartKey": start} if start else {}))
        page.pop("ResponseMetadata")
        pages.append(page)
        start = page.get("LastEvaluatedKey")
        if not start:
            return pages


@pytest.mark.parametrize("query", QUERIES, ids=range(len(QUERIES)))
def test_queries_and_their_answers_are_moto_s_own_page_for_page(ddb, monkeypatch, query):
    ours = all_pages(ddb, query)
    monkeypatch.setattr(Table, "query", Table.query.__wrapped__)
    monkeypatch.setattr(
        BaseJSONSerializer, "_serialize_type_structure", BaseJSONSerializer._serialize_type_structure.__wrapped__
    )
    assert ours == all_pages(ddb, query)
    assert sum(len(page["Items"]) for page in ours) > 0 or query["ExpressionAttributeValues"][":p"]["S"] == "nobody"


def test_answers_with_binary_and_nested_values_are_moto_s_own(ddb, monkeypatch):
    keys = [{"pk": {"S": "a"}, "sk": {"S": f"nb#{index:03d}"}} for index in (1, 4, 5)]
    ours = (
        ddb.get_item(TableName="t", Key=keys[2]),
        ddb.batch_get_item(RequestItems={"t": {"Keys": keys}}),
        ddb.scan(TableName="t"),
    )
    assert ours[0]["Item"]["bin"] == {"B": b"\x00\xffbinary"}
    monkeypatch.setattr(
        BaseJSONSerializer, "_serialize_type_structure", BaseJSONSerializer._serialize_type_structure.__wrapped__
    )
    theirs = (
        ddb.get_item(TableName="t", Key=keys[2]),
        ddb.batch_get_item(RequestItems={"t": {"Keys": keys}}),
        ddb.scan(TableName="t"),
    )
    for mine, moto_s in zip(ours, theirs, strict=True):
        mine.pop("ResponseMetadata"), moto_s.pop("ResponseMetadata")
        assert mine == moto_s


SECRET = "the-stacks-secret"


@pytest.fixture
def guarded(tmp_path, monkeypatch):
    """The embedded AWS on loopback, answering only the stack's key; and a client maker."""
    from devstack.state import StateFolder

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    key_id = "LOCAL" + "A" * 32
    folder = StateFolder(str(tmp_path / "state"))
    assert folder.take()
    server = embedded_aws.EmbeddedAws(folder, key_id, SECRET)
    server.start()

    def client(service, secret=SECRET, **options):
        return boto3.client(
            service,
            endpoint_url=server.endpoint,
            region_name="us-east-1",
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
            **options,
        )

    try:
        yield client
    finally:
        server.stop()
        folder.release()


def refused(call) -> str:
    with pytest.raises(ClientError) as raised:
        call()
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    return raised.value.response["Error"]["Code"]


def test_a_request_with_the_right_key_id_but_a_wrong_secret_is_refused(guarded):
    s3, ddb = guarded("s3"), guarded("dynamodb")
    s3.create_bucket(Bucket="bucket-b")
    key = "runs/alice/x y+z%/ünï.ipynb"  # signed over its encoded path
    s3.put_object(Bucket="bucket-b", Key=key, Body=b"secret notebook")
    assert s3.get_object(Bucket="bucket-b", Key=key)["Body"].read() == b"secret notebook"
    assert ddb.list_tables()["TableNames"] == []
    assert guarded("lambda").list_functions()["Functions"] == []  # a REST-JSON protocol

    assert (
        refused(lambda: guarded("s3", secret="guessed").get_object(Bucket="bucket-b", Key=key))
        == "SignatureDoesNotMatch"
    )
    assert refused(lambda: guarded("dynamodb", secret="guessed").list_tables()) == "InvalidSignatureException"
    assert refused(lambda: guarded("lambda", secret="guessed").list_functions()) == "InvalidSignatureException"
    assert refused(lambda: guarded("s3", secret="guessed").put_object(Bucket="bucket-b", Key="k", Body=b"x"))
    assert "Contents" not in s3.list_objects_v2(Bucket="bucket-b", Prefix="k")


@pytest.mark.parametrize("version", ["s3v4", "s3"], ids=["SigV4", "SigV2"])
def test_a_download_link_opens_its_object_only_and_only_until_it_expires(guarded, version):
    import time
    import urllib.error
    import urllib.request

    from botocore.config import Config

    s3 = guarded("s3", config=Config(signature_version=version))
    s3.create_bucket(Bucket="bucket-b")
    s3.put_object(Bucket="bucket-b", Key="runs/alice/out.ipynb", Body=b"alice's")
    s3.put_object(Bucket="bucket-b", Key="runs/bob/out.ipynb", Body=b"bob's")
    link = s3.generate_presigned_url(
        "get_object", Params={"Bucket": "bucket-b", "Key": "runs/alice/out.ipynb"}, ExpiresIn=2
    )
    assert urllib.request.urlopen(link).read() == b"alice's"
    for forged in (link.replace("alice", "bob"), link.replace("Signature=", "Signature=0")):
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(forged)
        assert raised.value.code == 403
    time.sleep(3)
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(link)
    assert raised.value.code == 403


def test_the_local_lambda_refuses_a_wrong_secret_too():
    """The local Lambda's server has the same guard: its Invoke API, signed SigV4 with a body."""
    import json

    from werkzeug.serving import make_server

    from devstack.credentials import CredentialGuard

    def invoke_api(environ, start_response):
        payload = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"echo": json.loads(payload)}).encode()]

    key_id = "LOCAL" + "B" * 32
    server = make_server("127.0.0.1", 0, CredentialGuard(invoke_api, key_id, SECRET), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:

        def invoke(secret):
            client = boto3.client(
                "lambda",
                endpoint_url=f"http://127.0.0.1:{server.server_port}",
                region_name="us-east-1",
                aws_access_key_id=key_id,
                aws_secret_access_key=secret,
            )
            return client.invoke(FunctionName="runner", Payload=b'{"run_id": "r"}')

        assert json.loads(invoke(SECRET)["Payload"].read()) == {"echo": {"run_id": "r"}}
        assert refused(lambda: invoke("guessed")) == "InvalidSignatureException"
    finally:
        server.shutdown()
