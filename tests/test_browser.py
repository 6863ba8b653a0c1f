"""The browser check itself must catch broken pages (the report passes it in test_e2e)."""

from __future__ import annotations

import base64

from tests.browser import check_page

PIXEL = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d49444154789c6360f8cfc0f01f0005000201e221bc330000000049454e44ae426082"
)).decode()


def test_a_good_page_loads_every_image_and_gives_a_screenshot(tmp_path):
    page = tmp_path / "good.html"
    page.write_text(f'<html><head><title>ok</title></head><body><h1>ok</h1>'
                    f'<img src="data:image/png;base64,{PIXEL}" alt="pixel"></body></html>')
    check = check_page(page, tmp_path)
    assert check.images == 1 and check.broken == [] and check.errors == []
    assert check.console_errors == []
    assert check.screenshot.stat().st_size > 1000


def test_a_broken_image_and_a_script_error_are_caught(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text('<html><head><title>bad</title></head><body>'
                    '<img src="data:image/png;base64,bm90IGEgcG5n" alt="not a png">'
                    '<script>undefinedFunction();</script></body></html>')
    check = check_page(page, tmp_path)
    assert check.broken == ["not a png"]
    assert any("undefinedFunction" in error for error in check.errors)
