// One test image of a dataset's sprite sheet (pipeline/error_browser.py lays it out), as an
// element errors.js and embedding.js both show: `data` is the dataset's errors-data, `k` the
// image's position among the images the page carries.
window.reportThumbnail = function (data, dataset, k) {
  "use strict";
  var tile = data.sprite.tile, columns = data.sprite.columns;
  var zoom = Math.max(1, Math.round(64 / Math.max(tile[0], tile[1])));  // ~64 px, whole zoom
  var picture = document.createElement("div");
  picture.className = "errors-sprite sprite-" + dataset;
  picture.setAttribute("role", "img");
  picture.setAttribute("aria-label", "test image #" + data.index[k]);
  var row = Math.floor(k / columns), column = k % columns;
  picture.style.width = tile[1] * zoom + "px";
  picture.style.height = tile[0] * zoom + "px";
  picture.style.backgroundSize = columns * tile[1] * zoom + "px " +
    data.sprite.rows * tile[0] * zoom + "px";
  picture.style.backgroundPosition = -column * tile[1] * zoom + "px " + -row * tile[0] * zoom + "px";
  return picture;
};
