// The report's click-through error analysis (section #<dataset>-errors), offline: pick a model
// or ensemble, open a cell of its confusion matrix to see the test images in it (the most
// confident first, with the top-3 probabilities and the label-quality score), or a class to see
// its least sure images. The data is pipeline/error_browser.py's; the thumbnails come from one
// sprite sheet per dataset, drawn by index (sprite.js).
(function () {
  "use strict";

  function percent(thousandths) { return (thousandths / 10).toFixed(1) + " %"; }

  function button(text, label, onClick) {
    var b = document.createElement("button");
    b.type = "button";
    b.textContent = text;
    b.setAttribute("aria-label", label);
    b.addEventListener("click", onClick);
    return b;
  }

  function setupPanel(panel, data) {
    var select = panel.querySelector(".errors-view");
    var matrix = panel.querySelector(".errors-matrix");
    var gallery = panel.querySelector(".errors-gallery");
    var classes = data.classes;

    function view() { return data.views[Number(select.value)]; }

    function thumbnail(k, v) {
      var figure = document.createElement("figure");
      figure.className = "errors-thumb";
      figure.dataset.index = data.index[k];
      figure.dataset.label = data.labels[k];
      figure.dataset.predicted = v.predicted[k];
      var picture = window.reportThumbnail(data, panel.dataset.dataset, k);
      var caption = document.createElement("figcaption");
      var top = v.top[k].map(function (c, j) {
        return classes[c] + " (" + percent(v.top_p[k][j]) + ")";
      });
      caption.textContent = "#" + data.index[k] + ", given " + classes[data.labels[k]] +
        "; top: " + top.join(", ") + "; label quality " + (data.quality[k] / 1000).toFixed(3);
      figure.appendChild(picture);
      figure.appendChild(caption);
      return figure;
    }

    function show(title, members, total, v) {
      gallery.textContent = "";
      var heading = document.createElement("p");
      heading.className = "errors-title";
      heading.textContent = title + ": " + total + " test image" + (total === 1 ? "" : "s") +
        (members.length < total ? ", the " + members.length + " shown here carried by the page" : "");
      gallery.appendChild(heading);
      members.forEach(function (k) { gallery.appendChild(thumbnail(k, v)); });
    }

    function openCell(given, predicted) {
      var v = view(), members = [];
      for (var k = 0; k < data.index.length; k++) {
        if (data.labels[k] === given && v.predicted[k] === predicted) { members.push(k); }
      }
      members.sort(function (a, b) { return v.top_p[b][0] - v.top_p[a][0] || a - b; });
      show(v.name + ": given " + classes[given] + ", predicted " + classes[predicted] +
           " (most confident first)", members.slice(0, data.per_list),
           v.confusion[given][predicted], v);
    }

    function openClass(given) {
      var v = view(), members = [];
      for (var k = 0; k < data.index.length; k++) {
        if (data.labels[k] === given) { members.push(k); }
      }
      members.sort(function (a, b) { return v.given_p[a] - v.given_p[b] || a - b; });
      var total = v.confusion[given].reduce(function (a, b) { return a + b; }, 0);
      show(v.name + ": given " + classes[given] + ", the least sure first (lowest probability " +
           "of the given label)", members.slice(0, data.per_list), total, v);
    }

    function render() {
      var v = view(), table = document.createElement("table");
      var head = table.insertRow();
      var corner = document.createElement("th");
      corner.textContent = "given \u2193 predicted \u2192";
      head.appendChild(corner);
      classes.forEach(function (name) {
        var th = document.createElement("th");
        th.textContent = name;
        head.appendChild(th);
      });
      classes.forEach(function (name, given) {
        var row = table.insertRow(), th = document.createElement("th");
        th.appendChild(button(name, "open the least sure test images given " + name,
                              function () { openClass(given); }));
        row.appendChild(th);
        classes.forEach(function (other, predicted) {
          var cell = row.insertCell(), count = v.confusion[given][predicted];
          cell.dataset.given = given;
          cell.dataset.predicted = predicted;
          cell.dataset.count = count;
          if (given === predicted) {
            cell.className = "diagonal";
            cell.textContent = count;
          } else if (count === 0) {
            cell.textContent = "0";
          } else {
            cell.className = "error";
            cell.appendChild(button(String(count), count + " test images given " + name +
                                    ", predicted " + other, function () { openCell(given, predicted); }));
          }
        });
      });
      matrix.textContent = "";
      matrix.appendChild(table);
    }

    select.addEventListener("change", function () { gallery.textContent = ""; render(); });
    render();
  }

  Array.prototype.forEach.call(document.querySelectorAll(".errors-panel"), function (panel) {
    setupPanel(panel, JSON.parse(panel.querySelector(".errors-data").textContent));
  });
})();
