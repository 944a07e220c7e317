"""The verdict: outcomes -> actions by the policy, the strongest wins; the A-R field and
the header edits (pymail.checks.verdict, .authres, pymail.mail.headeredit)."""

from __future__ import annotations

import pytest

from pymail.checks.authres import authentication_results, claims_authserv_id
from pymail.checks.results import (
    ArcResult,
    DkimResult,
    DkimSignature,
    DmarcResult,
    IprevResult,
    SpamVerdict,
    SpfResult,
    VirusVerdict,
)
from pymail.checks.verdict import Findings, decide
from pymail.config.checks import ACTIONS, DEFAULT_POLICY, OUTCOMES, ChecksConfig
from pymail.config.schema import Config
from pymail.mail.headeredit import HeaderEdit, edit_header
from pymail.mail.headers import parse_header
from pymail.proto.smtp.replies import Reply

HOST = "mx.ours.test"
SPF_PASS = SpfResult("pass", "mailfrom", "alice@signed.test", "signed.test")
DKIM_PASS = DkimResult((DkimSignature("pass", "signed.test", "sel1", "abcdefghijkl", "rsa-sha256"),))


def dmarc(result: str, disposition: str = "none", policy: str = "none") -> DmarcResult:
    return DmarcResult(result, "signed.test", policy=policy, disposition=disposition)


def verdict(config: ChecksConfig | None = None, **found):
    findings = Findings(authenticated=True, **found)
    return decide(findings, config or ChecksConfig(), authserv_id=HOST)


# ----------------------------------------------------------------- the default policy

@pytest.mark.parametrize(("found", "action", "reply"), [
    (dict(spf=SPF_PASS, dkim=DKIM_PASS, dmarc=dmarc("pass")), "accept", None),
    (dict(spf=SpfResult("fail", "mailfrom", "a@b.test", "b.test")), "annotate", None),
    (dict(spf=SpfResult("softfail", "mailfrom", "a@b.test", "b.test")), "accept", None),
    (dict(dmarc=dmarc("fail", "reject", "reject")), "reject", Reply.REJECT_DMARC),
    (dict(dmarc=dmarc("fail", "quarantine", "quarantine")), "junk", None),
    (dict(dmarc=dmarc("fail", "none", "none")), "accept", None),
    (dict(dmarc=dmarc("temperror")), "tempfail", Reply.TEMPFAIL_CHECKS),
    (dict(spam=SpamVerdict("reject", 15.0, 15.0)), "reject", Reply.REJECT_SPAM),
    (dict(spam=SpamVerdict("soft reject", 9.0, 15.0)), "tempfail", Reply.TEMPFAIL_GREYLIST),
    (dict(spam=SpamVerdict("greylist", 5.0, 15.0)), "tempfail", Reply.TEMPFAIL_GREYLIST),
    (dict(spam=SpamVerdict("add header", 7.0, 15.0)), "junk", None),
    (dict(spam=SpamVerdict("rewrite subject", 7.0, 15.0, subject="*** SPAM *** hi")), "junk", None),
    (dict(spam_error="connection refused"), "tempfail", Reply.TEMPFAIL_CHECKS),
    (dict(virus=VirusVerdict(True, "Eicar-Test-Signature")), "reject", Reply.REJECT_VIRUS),
    (dict(virus=VirusVerdict(False, skipped=True)), "annotate", None),
    (dict(virus_error="timed out"), "tempfail", Reply.TEMPFAIL_CHECKS),
    # the strongest wins: a virus beats a Junk verdict, a reject beats a tempfail
    (dict(spam=SpamVerdict("add header", 7.0, 15.0), virus=VirusVerdict(True, "X")),
     "reject", Reply.REJECT_VIRUS),
    (dict(spam_error="down", dmarc=dmarc("fail", "reject", "reject")), "reject", Reply.REJECT_DMARC),
])
def test_default_policy(found, action, reply):
    v = verdict(**found)
    assert (v.action, v.reply) == (action, reply)
    assert v.junk == (action == "junk")


def test_every_outcome_has_a_default_and_every_action_is_reachable_from_config():
    for check, outcomes in OUTCOMES.items():
        assert set(DEFAULT_POLICY[check]) == set(outcomes), check
    for action in ACTIONS:
        config = Config.model_validate({"checks": {"policy": {"spf": {"softfail": action}}}}).checks
        v = verdict(config, spf=SpfResult("softfail", "mailfrom", "a@b.test", "b.test"))
        assert v.action == action
        assert v.decided_by == ("spf.softfail" if action != "accept" else "")


def test_policy_rejects_unknown_names_with_the_key():
    with pytest.raises(ValueError, match="dmarc.fial: unknown outcome"):
        Config.model_validate({"checks": {"policy": {"dmarc": {"fial": "reject"}}}})
    with pytest.raises(ValueError, match="unknown check 'spff'"):
        Config.model_validate({"checks": {"policy": {"spff": {"fail": "reject"}}}})
    with pytest.raises(ValueError, match="spf.fail = 'drop': unknown action"):
        Config.model_validate({"checks": {"policy": {"spf": {"fail": "drop"}}}})


def test_dkim_outcome_passes_when_any_signature_passes():
    two = DkimResult((DkimSignature("fail", "x.test", "s", "bad"), DKIM_PASS.signatures[0]))
    assert dict(verdict(dkim=two).outcomes)["dkim"] == "pass"
    temp = DkimResult((DkimSignature("fail", "x.test", "s"), DkimSignature("temperror", "y.test", "s")))
    assert dict(verdict(dkim=temp).outcomes)["dkim"] == "temperror"
    assert dict(verdict(dkim=DkimResult()).outcomes)["dkim"] == "none"


def test_trusted_arc_sealer_turns_a_dmarc_reject_into_annotate():
    sealed = ArcResult("pass", sealers=("lists.trusted.test",), first_dmarc="pass")
    config = Config.model_validate({"checks": {"arc_trusted_sealers": ["lists.trusted.test"]}}).checks
    fail = dmarc("fail", "reject", "reject")
    assert verdict(config, dmarc=fail, arc=sealed).action == "annotate"
    # not trusted, a broken chain, or a first hop that did not see DMARC pass: rejected
    assert verdict(ChecksConfig(), dmarc=fail, arc=sealed).action == "reject"
    broken = ArcResult("fail", sealers=("lists.trusted.test",), first_dmarc="pass")
    assert verdict(config, dmarc=fail, arc=broken).action == "reject"
    unseen = ArcResult("pass", sealers=("lists.trusted.test",), first_dmarc="fail")
    assert verdict(config, dmarc=fail, arc=unseen).action == "reject"


# ----------------------------------------------------------------- Authentication-Results

def test_authentication_results_field():
    field = authentication_results(
        HOST, iprev=IprevResult("pass", "127.0.0.2", "mail.signed.test"), spf=SPF_PASS,
        dkim=DKIM_PASS, arc=ArcResult("none"), dmarc=dmarc("pass"))
    assert field == (
        b"Authentication-Results: mx.ours.test;\r\n"
        b"\tiprev=pass policy.iprev=127.0.0.2 (mail.signed.test);\r\n"
        b"\tspf=pass smtp.mailfrom=alice@signed.test;\r\n"
        b"\tdkim=pass header.d=signed.test header.s=sel1 header.b=abcdefghijkl header.a=rsa-sha256;\r\n"
        b"\tarc=none;\r\n"
        b"\tdmarc=pass header.from=signed.test\r\n")
    block = parse_header(field + b"\r\n")
    assert block.clean and len(block) == 1


def test_authentication_results_quotes_what_is_not_a_token_and_helo_identity():
    helo = SpfResult("fail", "helo", "postmaster@bad helo;x", "", reason="no (x) \\ nul\x00")
    field = authentication_results(HOST, spf=helo, dmarc=dmarc("fail", "quarantine", "quarantine"))
    assert b'smtp.helo="bad helo;x"' in field
    assert b"(no x  nul)" in field
    assert b"dmarc=fail header.from=signed.test (p=quarantine dis=QUARANTINE)" in field
    assert authentication_results(HOST) == b"Authentication-Results: mx.ours.test;\r\n\tnone\r\n"


@pytest.mark.parametrize(("value", "ours"), [
    ("mx.ours.test; spf=pass smtp.mailfrom=a@b", True),
    ("MX.Ours.Test 1; dkim=pass", True),
    ("(comment) mx.ours.test; none", True),
    ("mx.ours.test.; none", True),
    ("other.test; spf=pass", False),
    ("mx.ours.test.evil; spf=pass", False),
    ("", False),
])
def test_claims_authserv_id(value, ours):
    assert claims_authserv_id(value, HOST) is ours


# ----------------------------------------------------------------- the header edits

MESSAGE = (b"Return-Path: <alice@signed.test>\r\n"
           b"Received: from x by mx.ours.test; Wed, 2 Dec 2026 10:00:00 +0000\r\n"
           b"Authentication-Results: mx.ours.test; dkim=pass (forged)\r\n"
           b"Authentication-Results: elsewhere.test; spf=pass\r\n"
           b"X-Spam: No\r\n"
           b"Subject: hello\r\n"
           b"\tworld\r\n"
           b"From: alice@signed.test\r\n"
           b"\r\n"
           b"body\r\n")


def test_verdict_edit_puts_ours_on_top_and_removes_forgeries():
    v = verdict(spf=SPF_PASS, dkim=DKIM_PASS, dmarc=dmarc("pass"),
                spam=SpamVerdict("rewrite subject", 7.5, 15.0, subject="*** SPAM *** hello world",
                                 add_headers=(("X-Rspamd-Server", "local"),)))
    fields, replaced = edit_header(MESSAGE, v.edit)
    out = fields + MESSAGE[replaced:]
    block = parse_header(out)
    names = [f.lower_name for f in block]
    assert names[:2] == ["return-path", "authentication-results"]
    ars = block.get_all("Authentication-Results")
    assert len(ars) == 2 and ars[1].value == "elsewhere.test; spf=pass"
    assert [f.value for f in block.get_all("X-Spam")] == ["Yes"]
    assert block.get("X-Spam-Score").value == "7.50 / 15.00"
    assert block.get("X-Rspamd-Server").value == "local"
    assert [f.value for f in block.get_all("Subject")] == ["*** SPAM *** hello world"]
    assert out.endswith(b"From: alice@signed.test\r\n\r\nbody\r\n")
    assert b"Received: from x by mx.ours.test" in out


def test_unscanned_header_and_empty_edit():
    v = verdict(ChecksConfig.model_validate({"policy": {"rspamd": {"error": "accept"}}}),
                spam_error="connection refused")
    assert v.action == "accept"
    fields, _ = edit_header(MESSAGE, v.edit)
    assert b"X-Pymail-Unscanned: rspamd (connection refused)\r\n" in fields
    assert HeaderEdit().empty
    fields, replaced = edit_header(MESSAGE, HeaderEdit())
    assert fields + MESSAGE[replaced:] == MESSAGE


def test_non_ascii_subject_is_encoded():
    fields, replaced = edit_header(MESSAGE, HeaderEdit(subject="*** SPAM *** grüße"))
    subject = parse_header(fields + MESSAGE[replaced:]).get("Subject")
    assert subject.raw.isascii() and b"=?utf-8?" in subject.raw.lower()


def test_log_names_every_outcome():
    v = verdict(spf=SPF_PASS, dkim=DKIM_PASS, dmarc=dmarc("pass"),
                spam=SpamVerdict("no action", -0.5, 15.0, symbols=("R_SPF_ALLOW", "DMARC_POLICY_ALLOW")),
                virus=VirusVerdict(False))
    assert v.log == ("checks=spf:pass,dkim:pass,dmarc:pass,rspamd:no_action,clamav:clean "
                     "spam=-0.50/15.00(R_SPF_ALLOW,DMARC_POLICY_ALLOW)")
