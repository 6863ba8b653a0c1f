// The report's "draw and watch" panels, offline: the dataset's drawing recipe (the same steps as
// pipeline/drawing.py, which pipeline-predict uses) and a forward pass of the project's layers
// (conv, max/adaptive-average pooling, ReLU/LeakyReLU, linear; dropout is off at inference),
// run on the weights embedded in the page. Opened with #selftest, the page runs every embedded
// model on embedded test images and writes the largest difference from PyTorch's probabilities
// into #selftest.
(function () {
  "use strict";

  function decode(base64) {
    var text = atob(base64), bytes = new Uint8Array(text.length);
    for (var i = 0; i < text.length; i++) { bytes[i] = text.charCodeAt(i); }
    return new Float32Array(bytes.buffer);
  }

  // Python's round(): halves go to the even neighbour.
  function roundHalfEven(x) {
    var floor = Math.floor(x), diff = x - floor;
    if (diff > 0.5) { return floor + 1; }
    if (diff < 0.5) { return floor; }
    return floor % 2 === 0 ? floor : floor + 1;
  }

  // ---- layers: a tensor is {c, h, w, data} (Float64Array, channel-major) ----
  function conv2d(x, layer) {
    var out = layer.out, k = layer.kernel, s = layer.stride, pad = layer.padding;
    var h = Math.floor((x.h + pad[0] + pad[1] - k[0]) / s[0]) + 1;
    var w = Math.floor((x.w + pad[2] + pad[3] - k[1]) / s[1]) + 1;
    var data = new Float64Array(out * h * w), weight = layer.weight, bias = layer.bias;
    for (var o = 0; o < out; o++) {
      for (var i = 0; i < h; i++) {
        for (var j = 0; j < w; j++) {
          var sum = bias ? bias[o] : 0;
          for (var c = 0; c < x.c; c++) {
            for (var a = 0; a < k[0]; a++) {
              var y = i * s[0] + a - pad[0];
              if (y < 0 || y >= x.h) { continue; }
              var row = (c * x.h + y) * x.w, wrow = ((o * x.c + c) * k[0] + a) * k[1];
              for (var b = 0; b < k[1]; b++) {
                var xx = j * s[1] + b - pad[2];
                if (xx >= 0 && xx < x.w) { sum += x.data[row + xx] * weight[wrow + b]; }
              }
            }
          }
          data[(o * h + i) * w + j] = sum;
        }
      }
    }
    return {c: out, h: h, w: w, data: data};
  }

  function poolSize(size, kernel, stride, pad, ceil) {
    var span = size + 2 * pad - kernel;
    var out = (ceil ? Math.ceil(span / stride) : Math.floor(span / stride)) + 1;
    if (ceil && (out - 1) * stride >= size + pad) { out -= 1; }  // as PyTorch does
    return out;
  }

  function maxPool(x, layer) {
    var k = layer.kernel, s = layer.stride, p = layer.padding;
    var h = poolSize(x.h, k[0], s[0], p[0], layer.ceil), w = poolSize(x.w, k[1], s[1], p[1], layer.ceil);
    var data = new Float64Array(x.c * h * w);
    for (var c = 0; c < x.c; c++) {
      for (var i = 0; i < h; i++) {
        for (var j = 0; j < w; j++) {
          var best = -Infinity;
          for (var a = 0; a < k[0]; a++) {
            var y = i * s[0] + a - p[0];
            if (y < 0 || y >= x.h) { continue; }
            for (var b = 0; b < k[1]; b++) {
              var xx = j * s[1] + b - p[1];
              if (xx >= 0 && xx < x.w) { best = Math.max(best, x.data[(c * x.h + y) * x.w + xx]); }
            }
          }
          data[(c * h + i) * w + j] = best;
        }
      }
    }
    return {c: x.c, h: h, w: w, data: data};
  }

  function adaptiveAvgPool(x, layer) {
    var h = layer.size[0], w = layer.size[1], data = new Float64Array(x.c * h * w);
    for (var c = 0; c < x.c; c++) {
      for (var i = 0; i < h; i++) {
        var y0 = Math.floor(i * x.h / h), y1 = Math.ceil((i + 1) * x.h / h);
        for (var j = 0; j < w; j++) {
          var x0 = Math.floor(j * x.w / w), x1 = Math.ceil((j + 1) * x.w / w), sum = 0;
          for (var y = y0; y < y1; y++) {
            for (var xx = x0; xx < x1; xx++) { sum += x.data[(c * x.h + y) * x.w + xx]; }
          }
          data[(c * h + i) * w + j] = sum / ((y1 - y0) * (x1 - x0));
        }
      }
    }
    return {c: x.c, h: h, w: w, data: data};
  }

  function linear(x, layer) {
    var n = layer.out, m = layer.in, data = new Float64Array(n);
    for (var o = 0; o < n; o++) {
      var sum = layer.bias ? layer.bias[o] : 0, row = o * m;
      for (var i = 0; i < m; i++) { sum += x.data[i] * layer.weight[row + i]; }
      data[o] = sum;
    }
    return {c: n, h: 1, w: 1, data: data};
  }

  function activation(x, slope) {
    var data = new Float64Array(x.data.length);
    for (var i = 0; i < data.length; i++) {
      var v = x.data[i];
      data[i] = v > 0 ? v : v * slope;
    }
    return {c: x.c, h: x.h, w: x.w, data: data};
  }

  var LAYERS = {
    conv2d: conv2d, maxpool: maxPool, adaptiveavgpool: adaptiveAvgPool, linear: linear,
    relu: function (x) { return activation(x, 0); },
    leakyrelu: function (x, layer) { return activation(x, layer.slope); },
    flatten: function (x) { return {c: x.data.length, h: 1, w: 1, data: x.data}; },
    identity: function (x) { return x; }
  };

  function prepareModel(model) {
    model.layers.forEach(function (layer) {
      if (typeof layer.weight === "string") { layer.weight = decode(layer.weight); }
      if (typeof layer.bias === "string") { layer.bias = decode(layer.bias); }
    });
    return model;
  }

  // pixels: uint8 values (C*H*W) of one image as the dataset stores it; returns the logits
  // and the first convolution's output (after its activation, when one follows)
  function forward(model, pixels, shape) {
    var x = {c: shape[0], h: shape[1], w: shape[2], data: new Float64Array(pixels.length)};
    for (var i = 0; i < pixels.length; i++) { x.data[i] = pixels[i] / 255; }
    var maps = null;
    model.layers.forEach(function (layer, index) {
      x = LAYERS[layer.kind](x, layer);
      if (maps === null && layer.kind === "conv2d") {
        var next = model.layers[index + 1];
        maps = next && (next.kind === "relu" || next.kind === "leakyrelu") ? LAYERS[next.kind](x, next) : x;
      }
    });
    return {logits: Array.prototype.slice.call(x.data), maps: maps};
  }

  function softmax(logits) {
    var top = Math.max.apply(null, logits), exps = logits.map(function (v) { return Math.exp(v - top); });
    var total = exps.reduce(function (a, b) { return a + b; }, 0);
    return exps.map(function (v) { return v / total; });
  }

  // ---- the drawing recipe (pipeline/drawing.py, same steps and rounding) ----
  // Area-weighted resampling along one axis: each output pixel averages the input span it covers.
  function resizeAxis(src, rows, cols, newCols) {
    var out = new Float64Array(rows * newCols), scale = cols / newCols;
    for (var j = 0; j < newCols; j++) {
      var start = j * scale, end = (j + 1) * scale;
      var first = Math.floor(start), last = Math.min(cols, Math.ceil(end));
      for (var r = 0; r < rows; r++) {
        var sum = 0;
        for (var c = first; c < last; c++) {
          sum += src[r * cols + c] * (Math.min(end, c + 1) - Math.max(start, c));
        }
        out[r * newCols + j] = sum / scale;
      }
    }
    return out;
  }

  function transpose(src, rows, cols) {
    var out = new Float64Array(rows * cols);
    for (var r = 0; r < rows; r++) { for (var c = 0; c < cols; c++) { out[c * rows + r] = src[r * cols + c]; } }
    return out;
  }

  function areaResize(src, height, width, newHeight, newWidth) {
    var across = resizeAxis(src, height, width, newWidth);
    var down = resizeAxis(transpose(across, height, newWidth), newWidth, height, newHeight);
    return transpose(down, newWidth, newHeight);
  }

  // Twice the ink area over its outline (4-neighbour edges, outside counts as background).
  function strokeWidth(image, rows, cols, threshold) {
    var area = 0, outline = 0;
    function inked(r, c) { return r >= 0 && r < rows && c >= 0 && c < cols && image[r * cols + c] >= threshold; }
    for (var r = -1; r < rows; r++) {
      for (var c = -1; c < cols; c++) {
        var here = inked(r, c);
        if (here) { area++; }
        if (c >= 0 && here !== inked(r + 1, c)) { outline++; }
        if (r >= 0 && here !== inked(r, c + 1)) { outline++; }
      }
    }
    return 2 * area / outline;
  }

  function thickeningPasses(width, longerSide, frameSide, target) {
    if (target <= 0 || width * frameSide >= target * longerSide || target >= frameSide) { return 0; }
    return Math.max(0, roundHalfEven((target * longerSide - width * frameSide) / (2 * (frameSide - target))));
  }

  // image padded by `passes` pixels and grown that many times by a 4-neighbour maximum
  function dilate(image, rows, cols, passes) {
    var h = rows + 2 * passes, w = cols + 2 * passes, out = new Float64Array(h * w);
    for (var r = 0; r < rows; r++) {
      for (var c = 0; c < cols; c++) { out[(r + passes) * w + c + passes] = image[r * cols + c]; }
    }
    for (var p = 0; p < passes; p++) {
      var grown = new Float64Array(h * w);
      for (r = 0; r < h; r++) {
        for (c = 0; c < w; c++) {
          var i = r * w + c, v = out[i];
          if (r > 0) { v = Math.max(v, out[i - w]); }
          if (r + 1 < h) { v = Math.max(v, out[i + w]); }
          if (c > 0) { v = Math.max(v, out[i - 1]); }
          if (c + 1 < w) { v = Math.max(v, out[i + 1]); }
          grown[i] = v;
        }
      }
      out = grown;
    }
    return {data: out, rows: h, cols: w};
  }

  // ink: Float64Array (height*width) of 0..255, bright ink on dark; returns Uint8Array of size
  // H*W, or null when there is no ink
  function normalise(ink, height, width, size, recipe) {
    var lightest = Infinity, darkest = -Infinity;
    for (var p = 0; p < ink.length; p++) {
      lightest = Math.min(lightest, ink[p]); darkest = Math.max(darkest, ink[p]);
    }
    if (!(darkest - lightest >= recipe.min_contrast)) { return null; }
    if (lightest > 0 || darkest < 255) {
      var stretched = new Float64Array(ink.length);
      for (p = 0; p < ink.length; p++) { stretched[p] = (ink[p] - lightest) * 255 / (darkest - lightest); }
      ink = stretched;
    }
    var top = height, bottom = -1, left = width, right = -1;
    for (var y = 0; y < height; y++) {
      for (var x = 0; x < width; x++) {
        if (ink[y * width + x] >= recipe.threshold) {
          top = Math.min(top, y); bottom = Math.max(bottom, y);
          left = Math.min(left, x); right = Math.max(right, x);
        }
      }
    }
    if (bottom < 0) { return null; }
    var cropH = bottom - top + 1, cropW = right - left + 1, crop = new Float64Array(cropH * cropW);
    for (var r = 0; r < cropH; r++) {
      for (var c = 0; c < cropW; c++) { crop[r * cropW + c] = ink[(top + r) * width + left + c]; }
    }
    var k = recipe.supersample, frameH = size[0] * k, frameW = size[1] * k;
    if (recipe.min_stroke > 0) {
      var passes = thickeningPasses(strokeWidth(crop, cropH, cropW, recipe.threshold),
        Math.max(cropH, cropW), recipe.fit * Math.min(frameH, frameW), recipe.min_stroke);
      var thick = dilate(crop, cropH, cropW, passes);
      crop = thick.data; cropH = thick.rows; cropW = thick.cols;
    }
    var scale = recipe.fit * Math.min(frameH, frameW) / Math.max(cropH, cropW);
    var newH = Math.min(frameH, Math.max(1, roundHalfEven(cropH * scale)));
    var newW = Math.min(frameW, Math.max(1, roundHalfEven(cropW * scale)));
    var small = areaResize(crop, cropH, cropW, newH, newW);
    var total = 0, sumY = 0, sumX = 0;
    for (r = 0; r < newH; r++) {
      for (c = 0; c < newW; c++) {
        var v = small[r * newW + c];
        total += v; sumY += r * v; sumX += c * v;
      }
    }
    var offY, offX;
    if (recipe.center === "mass" && total > 0) {
      offY = roundHalfEven(frameH / 2 - sumY / total - 0.5);
      offX = roundHalfEven(frameW / 2 - sumX / total - 0.5);
    } else {
      offY = Math.floor((frameH - newH) / 2); offX = Math.floor((frameW - newW) / 2);
    }
    offY = Math.min(Math.max(offY, 0), frameH - newH);
    offX = Math.min(Math.max(offX, 0), frameW - newW);
    var frame = new Float64Array(frameH * frameW);
    for (r = 0; r < newH; r++) {
      for (c = 0; c < newW; c++) { frame[(offY + r) * frameW + offX + c] = small[r * newW + c]; }
    }
    var out = new Uint8Array(size[0] * size[1]);
    if (k === 1) {
      for (var i = 0; i < out.length; i++) { out[i] = Math.min(255, Math.max(0, Math.floor(frame[i] + 0.5))); }
      return out;
    }
    for (r = 0; r < size[0]; r++) {
      for (c = 0; c < size[1]; c++) {
        var count = 0;
        for (var a = 0; a < k; a++) {
          for (var b = 0; b < k; b++) {
            if (frame[(r * k + a) * frameW + c * k + b] >= recipe.threshold) { count++; }
          }
        }
        out[r * size[1] + c] = roundHalfEven(count * 255 / (k * k));
      }
    }
    return out;
  }

  // ---- the panels ----
  // Grey as PIL's "L" conversion computes it (what pipeline-predict reads images with).
  function greyOf(rgba, count) {
    var grey = new Float64Array(count);
    for (var i = 0; i < count; i++) {
      var r = rgba[4 * i], g = rgba[4 * i + 1], b = rgba[4 * i + 2], a = rgba[4 * i + 3] / 255;
      // a transparent pixel is white paper, as the canvas is
      r = r * a + 255 * (1 - a); g = g * a + 255 * (1 - a); b = b * a + 255 * (1 - a);
      grey[i] = Math.floor((r * 299 + g * 587 + b * 114) / 1000);
    }
    return grey;
  }

  // pipeline-predict's rule: a light border means dark ink on light paper, so invert
  function inkOf(grey, height, width) {
    var sum = 0, count = 0;
    for (var x = 0; x < width; x++) { sum += grey[x] + grey[(height - 1) * width + x]; count += 2; }
    for (var y = 0; y < height; y++) { sum += grey[y * width] + grey[y * width + width - 1]; count += 2; }
    if (sum / count <= 127) { return grey; }
    var ink = new Float64Array(grey.length);
    for (var i = 0; i < grey.length; i++) { ink[i] = 255 - grey[i]; }
    return ink;
  }

  // ---- occlusion saliency, window for window as pipeline/saliency.py computes it ----
  function occlusionWindows(height, width) {
    var side = Math.max(2, roundHalfEven(Math.min(height, width) / 7));
    var stride = Math.max(1, Math.floor(side / 2));
    function starts(size) {
      var found = [];
      for (var s = 0; s <= Math.max(size - side, 0); s += stride) { found.push(s); }
      if (found[found.length - 1] + side < size) { found.push(size - side); }
      return found;
    }
    return {side: side, tops: starts(height), lefts: starts(width)};
  }

  // The mean drop of the predicted class's probability over the squares of no ink covering
  // each pixel (H x W, channel-major pixels 0..255 as `forward` takes them): the state of one
  // map, a window at a time, then the map.
  function occlusionStart(model, pixels, shape) {
    var windows = occlusionWindows(shape[1], shape[2]), places = [];
    windows.tops.forEach(function (top) {
      windows.lefts.forEach(function (left) { places.push([top, left]); });
    });
    var base = softmax(forward(model, pixels, shape).logits);
    return {model: model, pixels: pixels, shape: shape, side: windows.side, places: places,
            next: 0, base: base, predicted: base.indexOf(Math.max.apply(null, base)),
            total: new Float64Array(shape[1] * shape[2]),
            covered: new Float64Array(shape[1] * shape[2]), copy: new Uint8Array(pixels.length)};
  }

  function occlusionStep(state) {
    var top = state.places[state.next][0], left = state.places[state.next][1], side = state.side;
    var channels = state.shape[0], height = state.shape[1], width = state.shape[2];
    var copy = state.copy, x, y;
    copy.set(state.pixels);
    for (var c = 0; c < channels; c++) {
      for (y = top; y < top + side; y++) {
        for (x = left; x < left + side; x++) { copy[(c * height + y) * width + x] = 0; }
      }
    }
    var drop = state.base[state.predicted] -
      softmax(forward(state.model, copy, state.shape).logits)[state.predicted];
    for (y = top; y < top + side; y++) {
      for (x = left; x < left + side; x++) {
        state.total[y * width + x] += drop;
        state.covered[y * width + x] += 1;
      }
    }
    state.next += 1;
  }

  function occlusionMap(state) {
    var map = new Float64Array(state.total.length);
    for (var i = 0; i < map.length; i++) {
      map[i] = state.covered[i] ? state.total[i] / state.covered[i] : 0;
    }
    return map;
  }

  function occlusion(model, pixels, shape) {
    var state = occlusionStart(model, pixels, shape);
    while (state.next < state.places.length) { occlusionStep(state); }
    return occlusionMap(state);
  }

  // The same map computed ~25 ms at a time, so drawing stays responsive (a 28x28 map of a
  // convolutional model is over a hundred forward passes); `stale()` true stops it.
  function occlusionInSlices(model, pixels, shape, done, stale) {
    var state = occlusionStart(model, pixels, shape);
    function slice() {
      if (stale()) { return; }
      var until = performance.now() + 25;
      while (state.next < state.places.length && performance.now() < until) { occlusionStep(state); }
      if (state.next < state.places.length) { window.setTimeout(slice, 0); } else { done(occlusionMap(state)); }
    }
    slice();
  }

  // `image` (ImageData) scaled up to fill `canvas`, its pixels kept square and sharp.
  function blit(canvas, image) {
    var scratch = document.createElement("canvas");
    scratch.width = image.width; scratch.height = image.height;
    scratch.getContext("2d").putImageData(image, 0, 0);
    var context = canvas.getContext("2d");
    context.imageSmoothingEnabled = false;
    context.clearRect(0, 0, canvas.width, canvas.height);
    context.drawImage(scratch, 0, 0, canvas.width, canvas.height);
  }

  // The input (dark ink on light) with the map over it: red where it raises the predicted
  // class, blue where it lowers it (pipeline/plots.py saliency_overlay's colours).
  function paintSaliency(canvas, pixels, map, height, width) {
    var context = canvas.getContext("2d"), image = context.createImageData(width, height);
    var bound = 0;
    for (var i = 0; i < map.length; i++) { bound = Math.max(bound, Math.abs(map[i])); }
    bound = bound || 1;
    for (i = 0; i < height * width; i++) {
      var weight = 0.7 * Math.min(1, Math.abs(map[i]) / bound), grey = 255 - pixels[i];
      var tint = map[i] >= 0 ? [215, 40, 40] : [40, 90, 215];
      for (var k = 0; k < 3; k++) { image.data[4 * i + k] = Math.round(grey * (1 - weight) + tint[k] * weight); }
      image.data[4 * i + 3] = 255;
    }
    blit(canvas, image);
  }

  function paint(canvas, pixels, height, width, scaleToMax) {
    var context = canvas.getContext("2d"), image = context.createImageData(width, height);
    var top = 0;
    if (scaleToMax) { for (var i = 0; i < pixels.length; i++) { top = Math.max(top, Math.abs(pixels[i])); } }
    for (i = 0; i < height * width; i++) {
      var v = scaleToMax ? (top > 0 ? 255 * Math.max(0, pixels[i]) / top : 0) : pixels[i];
      image.data[4 * i] = image.data[4 * i + 1] = image.data[4 * i + 2] = 255 - v;
      image.data[4 * i + 3] = 255;
    }
    blit(canvas, image);
  }

  function setupPanel(panel, data) {
    data.models.forEach(prepareModel);
    var board = panel.querySelector(".draw-board"), context = board.getContext("2d");
    var inputView = panel.querySelector(".draw-input"), bars = panel.querySelector(".draw-bars");
    var mapsModel = panel.querySelector(".draw-maps-model"), maps = panel.querySelector(".draw-maps");
    var saliencyView = panel.querySelector(".draw-saliency");
    var saliencyModel = panel.querySelector(".draw-saliency-model");
    var shape = data.shape, pending = false, drawing = false, saliencyTimer = null;
    var saliencyGeneration = 0;

    // occlusion takes a forward pass per square: started once the strokes pause, in slices,
    // and dropped when the drawing changes again
    function showSaliency(pixels) {
      var generation = ++saliencyGeneration;
      if (saliencyTimer !== null) { window.clearTimeout(saliencyTimer); }
      saliencyTimer = window.setTimeout(function () {
        saliencyTimer = null;
        var model = data.models.filter(function (m) { return m.name === saliencyModel.value; })[0];
        if (pixels === null || !model) {
          paint(saliencyView, new Uint8Array(shape[1] * shape[2]), shape[1], shape[2], false);
          saliencyView.dataset.model = "";
          return;
        }
        occlusionInSlices(model, pixels, shape, function (map) {
          paintSaliency(saliencyView, pixels, map, shape[1], shape[2]);
          saliencyView.dataset.model = model.name;
        }, function () { return generation !== saliencyGeneration; });
      }, 150);
    }

    function clear() {
      context.fillStyle = "#fff";
      context.fillRect(0, 0, board.width, board.height);
      update();
    }

    function show(pixels) {
      bars.innerHTML = "";
      if (maps) { maps.innerHTML = ""; }
      if (saliencyView && saliencyModel) { showSaliency(pixels); }
      if (pixels === null) {
        bars.textContent = "Draw something: every model's probabilities appear here.";
        paint(inputView, new Uint8Array(shape[1] * shape[2]), shape[1], shape[2], false);
        return;
      }
      paint(inputView, pixels, shape[1], shape[2], false);
      data.models.forEach(function (model) {
        var result = forward(model, pixels, shape), probabilities = softmax(result.logits);
        var best = probabilities.indexOf(Math.max.apply(null, probabilities));
        var row = document.createElement("div");
        row.className = "draw-row";
        row.dataset.model = model.name;
        row.dataset.probabilities = probabilities.map(function (p) { return p.toFixed(6); }).join(",");
        var label = document.createElement("div");
        label.className = "draw-label";
        label.textContent = model.name + ": " + data.classes[best] + " " + (100 * probabilities[best]).toFixed(1) + " %";
        row.appendChild(label);
        var chart = document.createElement("div");
        chart.className = "draw-chart";
        probabilities.forEach(function (p, k) {
          var bar = document.createElement("span");
          bar.style.height = Math.max(1, Math.round(60 * p)) + "px";
          bar.title = data.classes[k] + ": " + (100 * p).toFixed(1) + " %";
          if (k === best) { bar.className = "top"; }
          chart.appendChild(bar);
        });
        row.appendChild(chart);
        bars.appendChild(row);
        if (mapsModel && model.name === mapsModel.value && result.maps) {
          for (var c = 0; c < Math.min(result.maps.c, 16); c++) {
            var tile = document.createElement("canvas");
            tile.width = tile.height = 56;
            var size = result.maps.h * result.maps.w;
            paint(tile, result.maps.data.subarray(c * size, (c + 1) * size), result.maps.h, result.maps.w, true);
            maps.appendChild(tile);
          }
        }
      });
    }

    function update() {
      pending = false;
      var grey = greyOf(context.getImageData(0, 0, board.width, board.height).data, board.width * board.height);
      show(normalise(inkOf(grey, board.height, board.width), board.height, board.width,
                     [shape[1], shape[2]], data.recipe));
    }

    function schedule() {
      if (!pending) { pending = true; window.requestAnimationFrame(update); }
    }

    function point(event) {
      var box = board.getBoundingClientRect();
      return [(event.clientX - box.left) * board.width / box.width,
              (event.clientY - box.top) * board.height / box.height];
    }

    board.addEventListener("pointerdown", function (event) {
      drawing = true;
      if (board.setPointerCapture) { try { board.setPointerCapture(event.pointerId); } catch (e) { /* synthetic */ } }
      var p = point(event);
      context.beginPath();
      context.moveTo(p[0], p[1]);
      context.lineTo(p[0] + 0.01, p[1]);
      context.lineWidth = board.width / 14;
      context.lineCap = context.lineJoin = "round";
      context.strokeStyle = "#000";
      context.stroke();
      schedule();
      event.preventDefault();
    });
    board.addEventListener("pointermove", function (event) {
      if (!drawing) { return; }
      var p = point(event);
      context.lineTo(p[0], p[1]);
      context.stroke();
      schedule();
      event.preventDefault();
    });
    ["pointerup", "pointercancel", "pointerleave"].forEach(function (name) {
      board.addEventListener(name, function () { drawing = false; });
    });
    panel.querySelector(".draw-clear").addEventListener("click", clear);
    if (mapsModel) { mapsModel.addEventListener("change", update); }
    if (saliencyModel) { saliencyModel.addEventListener("change", update); }

    function load(file) {
      if (!file) { return; }
      var url = URL.createObjectURL(file), picture = new Image();
      picture.onload = function () {
        // the whole file, as pipeline-predict reads it, then shown on the board
        var scratch = document.createElement("canvas");
        scratch.width = picture.naturalWidth; scratch.height = picture.naturalHeight;
        var scratchContext = scratch.getContext("2d");
        scratchContext.drawImage(picture, 0, 0);
        var grey = greyOf(scratchContext.getImageData(0, 0, scratch.width, scratch.height).data,
                          scratch.width * scratch.height);
        context.fillStyle = "#fff";
        context.fillRect(0, 0, board.width, board.height);
        context.drawImage(picture, 0, 0, board.width, board.height);
        show(normalise(inkOf(grey, scratch.height, scratch.width), scratch.height, scratch.width,
                       [shape[1], shape[2]], data.recipe));
        URL.revokeObjectURL(url);
      };
      picture.src = url;
    }
    panel.querySelector(".draw-file").addEventListener("change", function (event) { load(event.target.files[0]); });
    board.addEventListener("dragover", function (event) { event.preventDefault(); });
    board.addEventListener("drop", function (event) {
      event.preventDefault();
      load(event.dataTransfer.files[0]);
    });
    clear();
  }

  function selftest(panels) {
    var worst = 0, models = 0, images = 0, worstSaliency = 0, saliencyMaps = 0;
    panels.forEach(function (data) {
      data.models.forEach(prepareModel);
      var text = atob(data.selftest_images), pixels = new Uint8Array(text.length);
      for (var i = 0; i < text.length; i++) { pixels[i] = text.charCodeAt(i); }
      var size = data.shape[0] * data.shape[1] * data.shape[2], count = pixels.length / size;
      images += count;
      data.models.forEach(function (model) {
        models += 1;
        for (var n = 0; n < count; n++) {
          var got = softmax(forward(model, pixels.subarray(n * size, (n + 1) * size), data.shape).logits);
          got.forEach(function (p, k) { worst = Math.max(worst, Math.abs(p - model.selftest[n][k])); });
        }
        (model.selftest_saliency || []).forEach(function (expected, n) {
          var map = occlusion(model, pixels.subarray(n * size, (n + 1) * size), data.shape);
          saliencyMaps += 1;
          expected.forEach(function (row, y) {
            row.forEach(function (v, x) {
              worstSaliency = Math.max(worstSaliency, Math.abs(v - map[y * data.shape[2] + x]));
            });
          });
        });
      });
    });
    var out = document.getElementById("selftest") || document.body.appendChild(document.createElement("pre"));
    out.id = "selftest";
    out.textContent = "max_abs_diff=" + worst.toExponential(2) + " models=" + models + " images=" + images +
      " saliency_max_abs_diff=" + worstSaliency.toExponential(2) + " saliency_maps=" + saliencyMaps;
  }

  var panels = [];
  document.querySelectorAll("script.draw-data").forEach(function (element) {
    var data = JSON.parse(element.textContent);
    panels.push(data);
    var panel = document.querySelector('.draw-panel[data-dataset="' + data.dataset + '"]');
    if (panel) { setupPanel(panel, data); }
  });
  if (location.hash === "#selftest") { selftest(panels); }

  window.ReportDraw = {decode: decode, forward: forward, softmax: softmax, normalise: normalise,
                       areaResize: areaResize, prepareModel: prepareModel, greyOf: greyOf,
                       inkOf: inkOf};
})();
