// Filter the tiles of a layer page by channel number or "dead" (plain JavaScript, no network).
document.addEventListener("DOMContentLoaded", function () {
  var box = document.getElementById("filter");
  if (!box) return;
  box.addEventListener("input", function () {
    var text = box.value.trim().toLowerCase();
    document.querySelectorAll(".tile").forEach(function (tile) {
      var keep = !text || tile.dataset.search.indexOf(text) !== -1;
      tile.style.display = keep ? "" : "none";
    });
  });
});
