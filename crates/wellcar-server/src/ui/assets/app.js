// Progressive enhancement only: every page works without this script.
// Moves keyboard focus to the first notice or error after a change, so screen readers say it.
document.addEventListener("DOMContentLoaded", function () {
  var notice = document.querySelector(".notice, .alert");
  if (notice) { notice.setAttribute("tabindex", "-1"); notice.focus(); }
});
