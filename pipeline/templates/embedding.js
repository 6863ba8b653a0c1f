// The report's embedding map (section #<dataset>-embedding), offline: each placed test image
// as a point at its PCA or t-SNE position of a model's penultimate features
// (pipeline/embedding.py), coloured by its given class; a mistake of that model drawn as a
// ring, a suspected label error with a dark outline. Hovering or focusing a point shows the
// image (from the dataset's sprite sheet, sprite.js) and the model's prediction.
(function () {
  "use strict";

  var SIZE = 520, MARGIN = 10, RADIUS = 3.2;
  var SVG = "http://www.w3.org/2000/svg";

  function setupPanel(panel, data) {
    var map = data.embedding, select = panel.querySelector(".embedding-model");
    var projection = panel.querySelector(".embedding-projection");
    var plot = panel.querySelector(".embedding-plot"), tip = panel.querySelector(".embedding-tip");
    var suspects = {};
    function colour(label) { return data.colours[label % data.colours.length]; }
    map.suspects.forEach(function (k) { suspects[k] = true; });

    function describe(k, model) {
      var v = data.views[model.view], predicted = v.predicted[k];
      tip.textContent = "";
      var picture = window.reportThumbnail(data, panel.dataset.dataset, k);
      var text = document.createElement("p");
      text.className = "embedding-caption";
      text.textContent = "#" + data.index[k] + ": given " + data.classes[data.labels[k]] +
        ", " + model.name + " predicts " + data.classes[predicted] + " (" +
        (v.top_p[k][0] / 10).toFixed(1) + " %)" +
        (predicted !== data.labels[k] ? ": a mistake" : "") +
        (suspects[k] ? "; a suspected label error" : "");
      tip.appendChild(picture);
      tip.appendChild(text);
    }

    function render() {
      var model = map.models[Number(select.value)];
      var which = projection.value === "tsne" && model.tsne ? model.tsne : model.pca;
      var v = data.views[model.view], svg = document.createElementNS(SVG, "svg");
      svg.setAttribute("viewBox", "0 0 " + SIZE + " " + SIZE);
      svg.setAttribute("width", SIZE);
      svg.setAttribute("height", SIZE);
      svg.setAttribute("role", "group");
      svg.setAttribute("aria-label", model.name + ": " + map.points.length + " test images");
      var scale = SIZE - 2 * MARGIN;
      map.points.forEach(function (k, p) {
        var dot = document.createElementNS(SVG, "circle"), wrong = v.predicted[k] !== data.labels[k];
        dot.setAttribute("cx", (MARGIN + which[2 * p] * scale).toFixed(1));
        dot.setAttribute("cy", (MARGIN + (1 - which[2 * p + 1]) * scale).toFixed(1));
        dot.setAttribute("r", wrong ? RADIUS + 1 : RADIUS);
        dot.setAttribute("fill", wrong ? "none" : colour(data.labels[k]));
        dot.setAttribute("stroke", suspects[k] ? "#000" : colour(data.labels[k]));
        dot.setAttribute("stroke-width", suspects[k] ? 2 : (wrong ? 1.6 : 0));
        dot.setAttribute("tabindex", "0");
        dot.setAttribute("class", "embedding-point" + (wrong ? " wrong" : "") +
                         (suspects[k] ? " suspect" : ""));
        dot.dataset.position = k;
        dot.dataset.index = data.index[k];
        var show = function () { describe(k, model); };
        dot.addEventListener("mouseover", show);
        dot.addEventListener("focus", show);
        dot.addEventListener("click", show);
        svg.appendChild(dot);
      });
      plot.textContent = "";
      plot.appendChild(svg);
      tip.textContent = "";
      projection.querySelector('option[value="tsne"]').disabled = !model.tsne;
    }

    select.addEventListener("change", render);
    projection.addEventListener("change", render);
    render();
  }

  Array.prototype.forEach.call(document.querySelectorAll(".embedding-panel"), function (panel) {
    var source = document.querySelector('.errors-panel[data-dataset="' + panel.dataset.dataset +
                                        '"] .errors-data');
    var data = JSON.parse(source.textContent);
    if (data.embedding && data.embedding.models && data.embedding.models.length) {
      setupPanel(panel, data);
    }
  });
})();
