"""The WeChat push protocol: signatures, AES (checked against a reference implementation written
from WeChat's documentation in tests/wechat_peer.py), push parsing, text splitting, the quota."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.outbox import backoff
from bot.wechat.delivery import EVENT_QUOTA, MESSAGE_QUOTA, open_window
from bot.wechat.protocol import (
    MAX_TEXT_BYTES,
    PushRejected,
    PushSecurity,
    parse_push,
    render_texts,
    split_text,
    text_reply_xml,
)
from core.messages import Option, Reply
from core.ports import ContactWindow
from tests.wechat_peer import (
    ACCOUNT,
    AES_KEY,
    AES_KEY_OLD,
    APP_ID,
    TOKEN,
    event_xml,
    image_xml,
    sha1_signature,
    text_xml,
    wechat_decrypt,
    wechat_encrypt,
)

SAFE = PushSecurity(TOKEN, APP_ID, "safe", [AES_KEY, AES_KEY_OLD], account_id=ACCOUNT)
NOW = datetime.fromtimestamp(1700000000, UTC)  # the time the pushes below were signed


def signed(ciphertext: str | None = None) -> dict[str, str]:
    query = {"timestamp": "1700000000", "nonce": "n0nce"}
    query["signature"] = sha1_signature(TOKEN, query["timestamp"], query["nonce"])
    if ciphertext is not None:
        query["encrypt_type"] = "aes"
        query["msg_signature"] = sha1_signature(
            TOKEN, query["timestamp"], query["nonce"], ciphertext
        )
    return query


def encrypted_body(xml: str, key: str = AES_KEY) -> tuple[dict[str, str], bytes]:
    ciphertext = wechat_encrypt(xml, key)
    return signed(ciphertext), f"<xml><Encrypt>{ciphertext}</Encrypt></xml>".encode()


def test_the_handshake_echoes_echostr_only_with_the_right_signature() -> None:
    echo, stamp = SAFE.handshake({**signed(), "echostr": "hello"}, NOW)
    assert (echo, stamp.timestamp, stamp.nonce) == ("hello", 1700000000, "n0nce")
    with pytest.raises(PushRejected) as refused:
        SAFE.handshake({**signed(), "signature": "f" * 40, "echostr": "hello"}, NOW)
    assert refused.value.status == 403


def test_a_push_encrypted_as_wechat_does_opens_with_the_current_or_previous_key() -> None:
    xml = text_xml("o1", "你好")
    for key in (AES_KEY, AES_KEY_OLD):
        query, body = encrypted_body(xml, key)
        opened = SAFE.open(query, body, NOW)
        assert (opened.xml, opened.encrypted) == (xml, True)


def test_msg_signature_not_signature_authenticates_an_encrypted_push() -> None:
    query, body = encrypted_body(text_xml("o1", "hi"))
    with pytest.raises(PushRejected) as refused:
        SAFE.open({**query, "msg_signature": query["signature"]}, body, NOW)
    assert refused.value.status == 403


def test_a_ciphertext_under_an_unknown_key_is_a_bad_request() -> None:
    query, body = encrypted_body(text_xml("o1", "hi"), key="B" * 43)
    with pytest.raises(PushRejected) as refused:
        SAFE.open(query, body, NOW)
    assert refused.value.status == 400


def test_safe_mode_refuses_plaintext_and_plaintext_mode_refuses_ciphertext() -> None:
    with pytest.raises(PushRejected):
        SAFE.open(signed(), text_xml("o1", "hi").encode(), NOW)
    plain = PushSecurity(TOKEN, APP_ID, "plaintext", account_id=ACCOUNT)
    query, body = encrypted_body(text_xml("o1", "hi"))
    with pytest.raises(PushRejected):
        plain.open(query, body, NOW)
    opened = plain.open(signed(), b"<xml/>", NOW)
    assert (opened.xml, opened.encrypted) == ("<xml/>", False)


def test_the_passive_reply_is_encrypted_with_the_current_key_for_the_app() -> None:
    reply = text_reply_xml(parse_push(text_xml("o1", "hi")), "回复")
    sealed = SAFE.seal(reply, encrypted=True, nonce="abc", timestamp="1700000001")
    ciphertext = sealed.split("<Encrypt><![CDATA[")[1].split("]]>")[0]
    assert f"<MsgSignature><![CDATA[{sha1_signature(TOKEN, '1700000001', 'abc', ciphertext)}" in (
        sealed
    )
    assert wechat_decrypt(ciphertext, AES_KEY) == reply
    assert SAFE.seal(reply, encrypted=False, nonce="abc", timestamp="1") == reply


def test_a_bad_encoding_aes_key_is_refused_at_start() -> None:
    with pytest.raises(ValueError):
        PushSecurity(TOKEN, APP_ID, "safe", ["too-short"], account_id=ACCOUNT)
    with pytest.raises(ValueError):
        PushSecurity(TOKEN, APP_ID, "compatible", [], account_id=ACCOUNT)


def test_pushes_are_read_with_their_dedupe_ids() -> None:
    text = parse_push(text_xml("o1", "卖卡", "1234567890123456"))
    assert (text.kind, text.text, text.dedupe_id) == ("text", "卖卡", "1234567890123456")
    image = parse_push(image_xml("o1", "MEDIA", "http://x/p.jpg", "77"))
    assert (image.kind, image.media_id, image.pic_url) == ("image", "MEDIA", "http://x/p.jpg")
    follow = parse_push(event_xml("o1", "subscribe", create_time=1700000000))
    unfollow = parse_push(event_xml("o1", "unsubscribe", create_time=1700000000))
    assert follow.kind == "subscribe" and unfollow.kind == "unsubscribe"
    assert follow.dedupe_id.startswith("o1:1700000000") and follow.dedupe_id != unfollow.dedupe_id
    click = parse_push(event_xml("o1", "CLICK", key="prices"))
    assert (click.kind, click.event_key) == ("click", "prices")
    assert parse_push(event_xml("o1", "VIEW", key="https://x")).kind == "ignored"
    hologram = text_xml("o1", "x").replace("CDATA[text]", "CDATA[hologram]")
    assert parse_push(hologram).kind == "unknown"
    location = text_xml("o1", "x").replace("CDATA[text]", "CDATA[location]")
    assert parse_push(location).kind == "unsupported"


@pytest.mark.parametrize(
    "xml",
    [
        "",
        "<xml>",
        "<not-xml/>",
        "<xml><MsgType>text</MsgType></xml>",
        "<xml><ToUserName>gh</ToUserName><FromUserName>o</FromUserName>"
        "<CreateTime>soon</CreateTime><MsgType>text</MsgType></xml>",
        text_xml("o1", "x", "12ab"),
        '<!DOCTYPE x [<!ENTITY a "aaaa">]><xml><MsgType>&a;</MsgType></xml>',
    ],
)
def test_malformed_pushes_are_bad_requests(xml: str) -> None:
    with pytest.raises(PushRejected) as refused:
        parse_push(xml)
    assert refused.value.status == 400


def test_options_are_numbered_lines_and_replies_join_into_one_text() -> None:
    replies = [Reply("报价如下"), Reply("请选择：", (Option("a", "接受"), Option("b", "放弃")))]
    assert render_texts(replies) == ["报价如下\n\n请选择：\n1. 接受\n2. 放弃"]
    assert render_texts(replies[:1], before=["早先的消息"]) == ["早先的消息\n\n报价如下"]
    assert render_texts([]) == []


@settings(deadline=None)  # a property, not a timing: the machine may be busy
@given(st.text(alphabet=st.sampled_from("卡a\n 1"), max_size=5000))
def test_split_texts_fit_the_limit_and_keep_every_visible_character_in_order(text: str) -> None:
    chunks = split_text(text, limit=100)
    assert all(0 < len(chunk.encode()) <= 100 and chunk.strip() for chunk in chunks)
    visible = [c for c in text if not c.isspace()]
    assert [c for c in "".join(chunks) if not c.isspace()] == visible


def test_a_long_receipt_is_split_at_line_breaks() -> None:
    text = "\n".join(f"第{n}行：" + "字" * 60 for n in range(40))
    chunks = split_text(text)
    assert len(chunks) > 1
    assert all(len(c.encode()) <= MAX_TEXT_BYTES for c in chunks)
    assert "\n".join(chunks) == text


T0 = datetime(2026, 11, 22, tzinfo=UTC)


def test_the_customer_service_quota_is_five_in_48_hours_or_three_in_a_minute() -> None:
    assert open_window(None, T0) is None
    wrote = ContactWindow("o1", last_message_at=T0)
    assert open_window(wrote, T0 + timedelta(hours=47)) == "message"
    assert open_window(wrote, T0 + timedelta(hours=48)) is None
    used = ContactWindow("o1", last_message_at=T0, message_sends=MESSAGE_QUOTA)
    assert open_window(used, T0) is None
    clicked = ContactWindow("o1", last_event_at=T0, event_sends=EVENT_QUOTA - 1)
    assert open_window(clicked, T0 + timedelta(seconds=59)) == "event"
    assert open_window(clicked, T0 + timedelta(seconds=61)) is None
    assert backoff(1) == timedelta(seconds=2) and backoff(30) == timedelta(hours=1)


def test_only_a_recent_well_formed_stamp_is_accepted() -> None:
    query = signed()
    assert SAFE.handshake(query, NOW + timedelta(seconds=300))[1].timestamp == 1700000000
    for late in (timedelta(seconds=301), timedelta(seconds=-301), timedelta(days=365)):
        with pytest.raises(PushRejected) as refused:
            SAFE.handshake(query, NOW + late)
        assert refused.value.status == 403
    for timestamp, nonce in (("１７", "n"), ("1" * 13, "n"), ("1700000000", "n" * 65), ("1", "")):
        forged = {"timestamp": timestamp, "nonce": nonce}
        forged["signature"] = sha1_signature(TOKEN, timestamp, nonce)
        with pytest.raises(PushRejected):
            SAFE.handshake(forged, NOW)
    stamp = SAFE.handshake(query, NOW)[1]
    assert SAFE.expires_at(stamp) == NOW + timedelta(seconds=300)


def test_compatible_mode_acts_only_on_the_encrypted_copy() -> None:
    compatible = PushSecurity(TOKEN, APP_ID, "compatible", [AES_KEY], account_id=ACCOUNT)
    with pytest.raises(PushRejected) as refused:
        compatible.open(signed(), text_xml("o1", "forged").encode(), NOW)
    assert refused.value.status == 400
    genuine = text_xml("o1", "genuine")
    ciphertext = wechat_encrypt(genuine, AES_KEY)
    body = text_xml("o1", "forged").replace("</xml>", f"<Encrypt>{ciphertext}</Encrypt></xml>")
    assert compatible.open(signed(ciphertext), body.encode(), NOW).xml == genuine


def test_the_binding_is_the_xml_acted_on() -> None:
    query, body = encrypted_body(text_xml("o1", "hi", "5"))
    again = encrypted_body(text_xml("o1", "hi", "5"))[1]  # re-encrypted: other bytes
    assert body != again
    assert (
        SAFE.open(query, body, NOW).binding
        == SAFE.open(
            {**query, "msg_signature": encrypted_body_signature(again)}, again, NOW
        ).binding
    )


def encrypted_body_signature(body: bytes) -> str:
    ciphertext = body.decode().split("<Encrypt>")[1].split("</Encrypt>")[0]
    return sha1_signature(TOKEN, "1700000000", "n0nce", ciphertext)


def test_a_push_for_another_account_is_refused() -> None:
    SAFE.check_recipient(parse_push(text_xml("o1", "hi")))
    other = text_xml("o1", "hi").replace(ACCOUNT, "gh_other")
    with pytest.raises(PushRejected) as refused:
        SAFE.check_recipient(parse_push(other))
    assert refused.value.status == 403


@pytest.mark.parametrize(
    "xml",
    [
        text_xml("o1", "x", "9" * 21),
        text_xml("o1", "x", str(2**64)),
        text_xml("o1", "x", "١٢٣"),
        event_xml("o1", "subscribe", create_time=10**10),
        text_xml("o" * 65, "x"),
        event_xml("o1", "CLICK", key="k" * 129),
        image_xml("o1", "m" * 257, "http://x/p.jpg"),
    ],
)
def test_ids_larger_than_wechat_sends_are_bad_requests(xml: str) -> None:
    with pytest.raises(PushRejected) as refused:
        parse_push(xml)
    assert refused.value.status == 400
