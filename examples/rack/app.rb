# frozen_string_literal: true

# A Rack app used in place of one tenant of the Showcase Rails app. It
# reads the environment variables a Showcase tenant reads and stores every
# visit in its own SQLite database, so a test can tell which process and
# which database served a request.
#
# It uses only Ruby's standard library and the sqlite3 gem, so it runs on
# Debian's ruby-sqlite3 (1.4) and on the sqlite3 2.x gem alike.

require "erb"
require "fileutils"
require "json"
require "sqlite3"
require "time"
require "uri"

module StandIn
  REASONS = {
    200 => "OK",
    400 => "Bad Request",
    500 => "Internal Server Error"
  }.freeze

  # Maximum delay a `?sleep=` request gets, so a forgotten test request
  # cannot hold a Puma thread for long.
  MAX_SLEEP_SECONDS = 60

  # Converts DATABASE_URL to an absolute file path. `sqlite3:///abs/x` is
  # absolute and `sqlite3://rel/x` or `sqlite3:rel/x` is relative to the
  # current directory. Without DATABASE_URL the app uses
  # tmp/db/RAILS_ENV.sqlite3.
  def self.database_path(url, rails_env)
    return File.expand_path("tmp/db/#{rails_env}.sqlite3") if url.nil? || url.empty?

    path = url.dup
    if path.include?("://") || path.start_with?("sqlite")
      unless path.match?(/\Asqlite3?:/)
        abort "DATABASE_URL must be a sqlite3 URL such as sqlite3:///data/db/app.sqlite3, got #{url.inspect}"
      end
      path = path.sub(/\Asqlite3?:/, "").sub(%r{\A//}, "")
    end
    # Rails puts connection options in the query string (?pool=5).
    path = path.split("?", 2).first
    abort "DATABASE_URL names no file: #{url.inspect}" if path.empty?

    File.expand_path(path)
  end

  # Writes this process's pid to `path`, as Rails does with PIDFILE, and
  # removes the file when the process exits. A file naming a live process
  # means another server owns the tenant, so boot stops there.
  def self.claim_pidfile(path)
    path = File.expand_path(path)
    if File.exist?(path)
      pid = File.read(path).to_i
      if pid.positive? && pid != Process.pid && process_alive?(pid)
        warn "A server is already running (pid: #{pid}, file: #{path})."
        # exit! skips Puma's handler, which would log a SystemExit raised
        # while loading config.ru as a failed application load.
        exit!(1)
      end
    end

    FileUtils.mkdir_p(File.dirname(path))
    File.write(path, "#{Process.pid}\n")
    at_exit do
      # Leave the file alone if another server has taken it over since.
      File.delete(path) if File.exist?(path) && File.read(path).to_i == Process.pid
    end
  end

  def self.process_alive?(pid)
    Process.kill(0, pid)
    true
  rescue Errno::ESRCH
    false
  rescue Errno::EPERM
    true
  end

  # The visits table of one tenant database. A single connection behind a
  # mutex serves every Puma thread, so statements from two threads never
  # interleave on it.
  class Visits
    def initialize(path)
      FileUtils.mkdir_p(File.dirname(path))
      @db = SQLite3::Database.new(path)
      # Several processes may share one database file (two tenants with the
      # same `database` var); wait for their write locks instead of failing.
      @db.busy_timeout = 5000
      @db.execute(<<~SQL)
        CREATE TABLE IF NOT EXISTS visits (
          id INTEGER PRIMARY KEY,
          path TEXT NOT NULL,
          time TEXT NOT NULL
        )
      SQL
      @lock = Mutex.new
    end

    # Inserts a visit and returns the number of visits afterwards.
    def record(path)
      @lock.synchronize do
        @db.execute("INSERT INTO visits (path, time) VALUES (?, ?)", [path, Time.now.utc.iso8601(6)])
        @db.get_first_value("SELECT count(*) FROM visits")
      end
    end

    def count
      @lock.synchronize { @db.get_first_value("SELECT count(*) FROM visits") }
    end
  end

  # The Rack application of one tenant.
  class App
    attr_reader :database, :mount

    def initialize(env = ENV)
      @scope = env.fetch("RAILS_APP_SCOPE", "")
      @owner = env.fetch("RAILS_APP_OWNER", "")
      @port = env["PORT"].to_s
      @mount = mount_point(env["RAILS_RELATIVE_URL_ROOT"], @scope)
      @database = StandIn.database_path(env["DATABASE_URL"], env.fetch("RAILS_ENV", "development"))
      @visits = Visits.new(@database)
    end

    def call(rack_env)
      started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      request = Request.new(rack_env)
      log %(Started #{request.request_method} "#{request.full_path}" for #{request.remote_ip} at #{Time.now.strftime("%Y-%m-%d %H:%M:%S %z")})

      status, headers, body = respond(request)

      elapsed_ms = ((Process.clock_gettime(Process::CLOCK_MONOTONIC) - started) * 1000).round
      log "Completed #{status} #{REASONS.fetch(status, "")} in #{elapsed_ms}ms"
      [status, headers, body]
    end

    private

    def respond(request)
      return text(200, "OK") if health_check?(request)

      params = request.query_params
      return text(400, "invalid query string: raw non-ASCII bytes must be %-encoded\n") if params.nil?

      pause(params["sleep"])
      read_only = %w[GET HEAD].include?(request.request_method)
      if read_only
        count = request.request_method == "HEAD" ? @visits.count : @visits.record(request.path)
        return json(200, payload(request, count)) if wants_json?(request, params)

        html(200, page(request, count))
      else
        form = request.body_params
        return text(400, "invalid request body\n") if form.nil?

        count = @visits.record(request.path)
        json(200, payload(request, count).merge("params" => params.merge(form)))
      end
    rescue SQLite3::Exception => e
      log "SQLite error on #{@database}: #{e.class}: #{e.message}"
      text(500, "database error: #{e.message}\n")
    end

    # `/up` below the mount point, or at the root when a caller bypasses
    # the mount (a probe sent straight to the tenant's port).
    def health_check?(request)
      %w[GET HEAD].include?(request.request_method) && relative_path(request.path) == "/up"
    end

    def mount_point(relative_url_root, scope)
      parts = [relative_url_root.to_s, scope.to_s].flat_map { |part| part.split("/") }
      parts.reject(&:empty?).map { |part| "/#{part}" }.join
    end

    # Requests outside the mount point are served too, with their full
    # path, because tests may reach the app at any path.
    def relative_path(path)
      return path if @mount.empty?
      return "/" if path == @mount
      return path.delete_prefix(@mount) if path.start_with?("#{@mount}/")

      path
    end

    def wants_json?(request, params)
      params["format"] == "json" ||
        request.path.end_with?(".json") ||
        request.accept.include?("application/json")
    end

    def pause(seconds)
      return if seconds.nil?

      delay = Float(seconds, exception: false)
      sleep(delay.clamp(0, MAX_SLEEP_SECONDS)) if delay
    end

    def payload(request, count)
      {
        "pid" => Process.pid,
        "database" => @database,
        "scope" => @scope,
        "owner" => @owner,
        "visits" => count,
        "path" => request.path,
        "port" => @port,
        "method" => request.request_method,
        "remote_ip" => request.remote_ip
      }
    end

    def page(request, count)
      escape = ->(value) { ERB::Util.html_escape(value.to_s) }
      <<~HTML
        <!DOCTYPE html>
        <html lang="en">
        <head><meta charset="utf-8"><title>#{escape.call(@owner.empty? ? "Showcase" : @owner)}</title></head>
        <body>
        <h1 id="owner">#{escape.call(@owner)}</h1>
        <p>Scope: <code id="scope">#{escape.call(@scope)}</code></p>
        <p>Visits: <span id="visits">#{count}</span></p>
        <p>Path <code id="path">#{escape.call(request.path)}</code>, served by pid <span id="pid">#{Process.pid}</span> on port <span id="port">#{escape.call(@port)}</span> from <code id="database">#{escape.call(@database)}</code>.</p>
        <form method="post"><input name="note" id="note"><button type="submit" id="submit">Record a visit</button></form>
        </body>
        </html>
      HTML
    end

    def text(status, body)
      respond_with(status, "text/plain; charset=utf-8", body)
    end

    def html(status, body)
      respond_with(status, "text/html; charset=utf-8", body)
    end

    def json(status, data)
      respond_with(status, "application/json; charset=utf-8", "#{JSON.generate(data)}\n")
    end

    def respond_with(status, content_type, body)
      headers = { "content-type" => content_type, "content-length" => body.bytesize.to_s }
      [status, headers, [body]]
    end

    def log(line)
      $stdout.puts(line)
    end
  end

  # The parts of a Rack request the app looks at.
  class Request
    def initialize(rack_env)
      @env = rack_env
    end

    def request_method
      @env["REQUEST_METHOD"]
    end

    def path
      path = "#{@env["SCRIPT_NAME"]}#{@env["PATH_INFO"]}"
      path.empty? ? "/" : path
    end

    def full_path
      query = @env["QUERY_STRING"].to_s
      query.empty? ? path : "#{path}?#{query}"
    end

    def accept
      @env["HTTP_ACCEPT"].to_s
    end

    # The first X-Forwarded-For entry (the client behind a proxy such as
    # navigator), else the peer address.
    def remote_ip
      forwarded = @env["HTTP_X_FORWARDED_FOR"].to_s.split(",").first.to_s.strip
      forwarded.empty? ? @env["REMOTE_ADDR"].to_s : forwarded
    end

    # Returns nil when the query string contains raw non-ASCII bytes, which
    # URI.decode_www_form rejects. Bad %-escapes pass through undecoded.
    def query_params
      decode_form(@env["QUERY_STRING"].to_s)
    end

    # Returns the request body as a hash, or nil when it cannot be parsed.
    # Bodies that are neither JSON nor URL-encoded forms count as empty.
    def body_params
      input = @env["rack.input"]
      body = input ? input.read.to_s : ""
      return {} if body.empty?

      content_type = @env["CONTENT_TYPE"].to_s
      if content_type.include?("application/json")
        data = JSON.parse(body)
        data.is_a?(Hash) ? data : { "_json" => data }
      elsif content_type.include?("application/x-www-form-urlencoded")
        decode_form(body)
      else
        {}
      end
    rescue JSON::ParserError
      nil
    end

    private

    def decode_form(text)
      URI.decode_www_form(text).to_h
    rescue ArgumentError
      nil
    end
  end
end
