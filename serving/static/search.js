// shoesearch search page: choose, drop or paste a photo; it is shown at once and searched. The chosen photo is
// kept for this tab (sessionStorage) so that the result page shows it and its file field still holds it.
// Without JavaScript the form works as a plain upload. Inlined into the page by serving.pages.
(function () {
  "use strict";
  var form = document.getElementById("search-form");
  if (!form) return;
  var input = document.getElementById("photo");
  var zone = document.getElementById("drop");
  var preview = document.getElementById("preview");
  var hint = document.getElementById("drop-hint");
  var KEY = "shoesearch.query";
  var MAX_KEEP = 3 * 1024 * 1024; // larger photos are searched but not kept for the next page

  function show(url) {
    if (preview && url) { preview.src = url; preview.hidden = false; }
    var query = document.getElementById("query-photo");
    if (query && url && !query.getAttribute("src")) { query.src = url; query.closest("figure").hidden = false; }
  }

  function setFile(file) {
    var dt = new DataTransfer();
    dt.items.add(file);
    input.files = dt.files;
  }

  function keep(file, then) {
    if (file.size > MAX_KEEP || !window.FileReader) return then();
    var reader = new FileReader();
    reader.onload = function () {
      try {
        sessionStorage.setItem(KEY, JSON.stringify({name: file.name, type: file.type, data: reader.result}));
      } catch (e) { /* storage full or disabled: the photo is still searched */ }
      then();
    };
    reader.onerror = then;
    reader.readAsDataURL(file);
  }

  function search(file) {
    if (!file) return;
    if (/^image\//.test(file.type)) show(URL.createObjectURL(file));
    zone.classList.add("busy");
    if (hint) hint.textContent = "Searching…";
    keep(file, function () { form.requestSubmit ? form.requestSubmit() : form.submit(); });
  }

  function restore() {
    if (form.dataset.restore !== "1") { try { sessionStorage.removeItem(KEY); } catch (e) {} return; }
    var saved;
    try { saved = JSON.parse(sessionStorage.getItem(KEY) || "null"); } catch (e) { saved = null; }
    if (!saved || !saved.data || !/^image\//.test(saved.type || "")) return;
    fetch(saved.data).then(function (r) { return r.blob(); }).then(function (blob) {
      setFile(new File([blob], saved.name || "photo", {type: saved.type || blob.type}));
      show(saved.data);
      if (hint) hint.textContent = "Search again, or choose another photo";
    }).catch(function () {});
  }

  input.addEventListener("change", function () { search(input.files[0]); });
  ["dragenter", "dragover"].forEach(function (name) {
    zone.addEventListener(name, function (e) { e.preventDefault(); zone.classList.add("over"); });
  });
  ["dragleave", "drop"].forEach(function (name) {
    zone.addEventListener(name, function () { zone.classList.remove("over"); });
  });
  zone.addEventListener("drop", function (e) {
    e.preventDefault();
    var file = e.dataTransfer && e.dataTransfer.files[0];
    if (file) { setFile(file); search(file); }
  });
  document.addEventListener("paste", function (e) {
    var items = (e.clipboardData && e.clipboardData.files) || [];
    for (var i = 0; i < items.length; i++) {
      if (items[i].type.indexOf("image/") === 0) { e.preventDefault(); setFile(items[i]); search(items[i]); return; }
    }
  });
  form.addEventListener("submit", function () { zone.classList.add("busy"); });
  window.addEventListener("pageshow", function () { zone.classList.remove("busy"); }); // back from the results
  restore();
})();
