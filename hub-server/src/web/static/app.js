// Small conveniences only: every page works without this file.
(function () {
  // The rescan reason is needed only when "rescan" is chosen.
  var form = document.getElementById('verdict-form');
  if (!form) return;
  var reason = form.querySelector('input[name=rescan_reason]');
  function sync() {
    var r = form.querySelector('input[name=recommendation]:checked');
    reason.required = !!(r && r.value === 'rescan');
  }
  form.addEventListener('change', sync);
  sync();
})();
