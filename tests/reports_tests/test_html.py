"""report.html: figures at one scale, so their text shows at one size."""

from PIL import Image

from reports.html import Picture, html_figure, png_size


def test_figures_show_at_one_scale_whatever_their_width(tmp_path):
    wide, narrow = tmp_path / "wide.png", tmp_path / "narrow.png"
    Image.new("RGB", (1800, 450), "white").save(wide)  # 12 x 3 inches at 150 dpi
    Image.new("RGB", (600, 450), "white").save(narrow)  # 4 x 3 inches
    assert png_size(wide) == (1800, 450)
    assert 'width="1440" height="360"' in html_figure(Picture(wide, "a", "b"))  # 120 CSS px per inch
    assert 'width="480" height="360"' in html_figure(Picture(narrow, "a", "b"))
