# perl stream.pl ADDRESS DATA PAUSE COPY: streams the file DATA through
# ADDRESS, paced (PAUSE seconds after each MiB), while it writes the echo
# into the file COPY (perl-base has no digest; sha256sum compares the files).
use strict; use warnings;
use IO::Socket::INET;
my ($address, $data, $pause, $copy) = @ARGV;
my $socket = IO::Socket::INET->new(PeerAddr => $address, Timeout => 5) or die "connect: $!";
my $greeting = "";
while ($greeting !~ /\n/) { sysread($socket, my $byte, 1) or die "no greeting"; $greeting .= $byte }
my $pid = fork() // die "fork: $!";
if ($pid == 0) {
    open(my $in, "<", $data) or die "$data: $!";
    while (sysread($in, my $chunk, 1048576)) {
        my $done = 0;
        while ($done < length $chunk) {
            my $n = syswrite($socket, $chunk, length($chunk) - $done, $done) // die "write: $!";
            $done += $n;
        }
        select(undef, undef, undef, $pause);
    }
    shutdown($socket, 1);
    exit 0;
}
open(my $out, ">", $copy) or die "$copy: $!";
while (1) {
    my $n = sysread($socket, my $buffer, 65536);
    die "read: $!" unless defined $n;
    last if $n == 0;
    print $out $buffer;
}
close $out;
waitpid($pid, 0);
exit($? >> 8);
