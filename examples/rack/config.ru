# frozen_string_literal: true

require_relative "app"

# Navigator captures stdout line by line; a buffered stream would hold the
# request log back until Puma exits.
$stdout.sync = true

pidfile = ENV.fetch("PIDFILE", "")
# Claim the pid file before opening the database, so a refused boot leaves
# the database untouched.
StandIn.claim_pidfile(pidfile) unless pidfile.empty?

app = StandIn::App.new
puts "=> Booting stand-in app: pid #{Process.pid}, mount #{app.mount.empty? ? "/" : app.mount}, database #{app.database}"

run app
